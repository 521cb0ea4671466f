"""Closing periods: collected items -> one ordinary mail job per (recipient, template), or per
recipient across templates (``BEANMAIL_DIGEST_GROUP=recipient``).

A digest's key is ``digest:<recipient>:<template or *>:<period end, UTC>:<6 hex>``. Closing is
three steps, each safe to repeat: (1) one transaction gives the waiting items of due recipients
the new key (two closers on two hosts: each item goes to one of them); (2) the job is put with
that key; (3) the items are deleted. A closer that stops between (1) and (3) leaves items marked
with their key; the next closer puts the job again under the same key, and the sending stage's
claim lets only one copy through. Items collected after (1) wait for the next digest.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from producer import envelope as env
from producer.client import INLINE_LIMIT, EnqueueError, Notifier
from producer.envelope import Envelope, Recipient
from producer.prefs import zone

from ..logs import get_logger, mask_text
from ..settings import Settings
from ..store import Store, StoreUnavailable
from .collect import DEFAULT_GROUP
from .periods import local_text, utc_label
from .records import Batch, DigestRecords

PAGE = 500  # recipients closed per transaction
STALE = 120.0  # seconds after which a closed digest whose items are still here is queued again
GRACE = 60.0  # `run` closes a period this long after it ends: a collection that read the clock
              # just before the end has committed by then (the store's lock timeout is 30 s)


@dataclass
class Closed:
    digests: int = 0
    items: int = 0
    resumed: int = 0


class Closer:
    def __init__(self, settings: Settings, store: Store, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.records = DigestRecords(store)
        # large digests go by reference into the store, like any large job; no spool: a digest
        # that cannot be queued stays closed in the store and is queued again (STALE)
        self.notifier = notifier or Notifier(settings.beanstalk_url, secret=settings.secret, spool="",
                                             blobs=settings.store)
        self.log = get_logger()
        self.stopping = False

    def key(self, recipient: str, group: str, due_at: float) -> str:
        group = "*" if group == DEFAULT_GROUP else group
        return f"digest:{recipient}:{group}:{utc_label(due_at)}:{os.urandom(3).hex()}"

    def close(self, now: float | None = None, *, everything: bool = False, grace: float = 0.0,
              stale: float = STALE) -> Closed:
        """Queue every digest that is due at ``now`` (less ``grace``), or with ``everything``
        every waiting item now; first those a stopped closer left behind."""
        now = time.time() if now is None else now
        done = Closed()
        while not self.stopping:
            keys = self.records.stale(now - stale, PAGE)
            if not keys:
                break
            done.resumed += len(keys)
            self._queue(keys, done)
        cutoff = float("inf") if everything else now - grace
        after: str | None = ""
        while not self.stopping and after is not None:
            keys, after = self.records.assign(cutoff, time.time(), self.key, after, PAGE)
            if keys:
                self._queue(keys, done)
        return done

    def _queue(self, keys: list[str], done: Closed) -> None:
        batches = self.records.batches(keys, self.settings.digest_max_items)
        tube, pri = env.PRIORITIES["normal"]
        small = []
        for b in batches:
            envelope = self.envelope(b)
            body = env.encode(envelope, self.settings.secret or None)
            if len(body) > INLINE_LIMIT:
                self.notifier.put(envelope)  # by reference, through the blob store
            else:
                small.append((tube, pri, body))
        self.notifier.put_many(small)  # pipelined: one round trip per few hundred
        done.digests += len(batches)
        done.items += sum(b.total for b in batches)
        self.records.delete(keys)

    def envelope(self, b: Batch) -> Envelope:
        newest = b.items[0][1]
        tz = zone(newest.get("tz") or self.settings.digest_timezone)
        items = [{"template": item["template"], "context": item["context"], "time": local_text(created, tz),
                  **({"entities": item["entities"]} if item.get("entities") else {}),
                  **({"not_after": item["not_after"]} if item.get("not_after") is not None else {})}
                 for created, item in reversed(b.items)]  # the newest N, oldest first
        context = {"items": items, "count": b.total, "more": b.total - len(items), "period": newest.get("period", ""),
                   "period_end": local_text(b.due_at, tz), "timezone": tz.key}
        return Envelope(kind="mail", id=b.key, to=(Recipient(b.recipient, newest.get("name", "")),),
                        template=b.group, context=context, priority="normal", created_at=env.now(),
                        digest="compiled")

    # -- `beanmail digest run` ------------------------------------------------------------------
    def run(self, interval: float | None = None) -> int:
        """Close due periods every ``interval`` seconds until SIGTERM; 0 when stopped. beanstalkd
        or the store being away is waited out, never exited on."""
        interval = interval or self.settings.digest_interval
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, lambda *_: None)  # the workers reload templates on HUP; nothing here
        self.log.info("digest closer started", interval=interval)
        while not self.stopping:
            started = time.monotonic()
            try:
                done = self.close(grace=GRACE)
                if done.digests or done.resumed:
                    self.log.info("digests queued", digests=done.digests, items=done.items, resumed=done.resumed,
                                  duration_ms=round((time.monotonic() - started) * 1000, 1))
            except (EnqueueError, StoreUnavailable) as exc:
                # closed digests stay in the store and are queued again once both are back
                self.log.warning("digests not queued; retrying", error=mask_text(str(exc)))
            deadline = started + interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.notifier.close()
        self.log.info("digest closer stopped")
        return 0

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True
