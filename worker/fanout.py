"""The sorting stage: one mailout chunk -> one mail job per recipient.

Each recipient's job carries the deterministic key ``<mailout key>:<address>``, so a chunk that
runs twice (a worker killed mid-chunk, a chunk kicked by an operator) sends nobody twice: the
second copy is skipped as a duplicate by the sending stage's claim.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Iterator

from producer import envelope as env
from producer.client import EnqueueError, Notifier
from producer.envelope import Envelope

from .job import OneByOne, Reserved
from .logs import get_logger, mask_text
from .outcomes import Disposition, Outage, Poison, RetryPolicy, disposition
from .validate import check_envelope
from .settings import Settings
from .store import KEY_LIMIT


def recipient_key(mailout_key: str, address: str) -> str:
    """``<mailout key>:<address>``; when that is longer than a key may be (KEY_LIMIT), the
    mailout key's start and a digest of the whole (``<start>:~<sha256 hex, 32>``): still one
    key per mailout and recipient, the same on every run, and short enough to be claimed."""
    key = f"{mailout_key}:{address.lower()}"
    if len(key) <= KEY_LIMIT:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{mailout_key[:KEY_LIMIT - len(digest) - 2]}:~{digest}"


class Fanout(OneByOne):
    capacity = 1  # one chunk at a time: each is thousands of puts, and holds its TTR meanwhile

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        # no spool here: a chunk that cannot be fanned out stays in beanstalkd and is retried
        self.notifier = notifier or Notifier(settings.beanstalk_url, secret=settings.secret, spool="", blobs="")
        self.backoff = RetryPolicy.from_settings(settings)
        self.log = get_logger()

    def expand(self, chunk: Envelope, touch: Callable[[], None]) -> int:
        mailout_key = chunk.id.rpartition("#")[0] or chunk.id
        excluded = {a.lower() for a in chunk.exclude}
        tube, pri = env.PRIORITIES[chunk.priority]
        body = env.encoder_for(chunk, self.settings.secret or None)

        def jobs() -> Iterator[tuple[str, int, bytes]]:
            for n, recipient in enumerate(chunk.to):
                if recipient.address.lower() in excluded:
                    continue
                if n % 500 == 499:
                    touch()
                yield tube, pri, body(recipient_key(mailout_key, recipient.address), recipient)
        return len(self.notifier.put_many(jobs()))

    # -- the loop's BatchStage contract, one job at a time (OneByOne) -----------------------------
    def handle(self, job: Reserved) -> Disposition:
        attempt = lambda: job.attempt  # noqa: E731 - asked only by a deferral
        touch = job.touch
        started = time.monotonic()
        queued = 0
        try:
            try:
                chunk = env.decode(job.body, self.settings.secret or None)
            except env.EnvelopeError as exc:
                raise Poison(f"bad envelope: {exc}") from None
            if chunk.kind != "mailout":
                raise Poison(f"kind {chunk.kind!r} does not belong on the mailout tube")
            check_envelope(chunk)  # expired: skipped; a refused header buries the chunk, not each recipient
            queued = self.expand(chunk, touch)
            d = disposition(None, attempt, self.backoff)
        except EnqueueError as exc:  # re-running the chunk is safe: keys are deterministic
            # beanstalkd away is an outage: waited out, never spent
            d = disposition(Outage(f"fan-out put failed: {exc}"), attempt, self.backoff)
        except Exception as exc:  # noqa: BLE001 - classified, never escapes
            d = disposition(exc, attempt, self.backoff)
        self.log.info("mailout chunk", job=job.id, tube="mailout", outcome=d.outcome,
                      queued=queued, reason=(mask_text(d.reason) if self.settings.mask_addresses else d.reason) or None,
                      duration_ms=round((time.monotonic() - started) * 1000, 2))
        return d

    def reload(self) -> None:
        pass

    def close(self) -> None:
        self.notifier.close()
