"""One job on its way through the sending stage (``Delivery``) and what it came to (``Result``),
the transport port the stage sends through, and the log line of a job's end.

``Delivery`` goes through the pipeline's steps in order — decoded, checked (worker/checks.py),
claimed, built (worker/compose.py, then signed), sent, concluded — and records a step's failure
in ``error`` instead of raising, so that a batch goes on without it; ``ready`` says it may go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from producer.envelope import Envelope

from . import logs
from .job import Reserved
from .logs import mask, mask_text
from .outcomes import Disposition, Fate
from .settings import Settings
from .transports.protocol import Reply


class Transport(Protocol):
    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = ...) -> Reply: ...

    def close(self) -> None: ...


def make_transport(settings: Settings) -> Transport:
    if settings.transport == "mx":
        from .transports.mx import MxTransport

        return MxTransport.from_settings(settings)
    from .relays.transport import FailoverTransport

    return FailoverTransport(settings)  # each priority's relays, in order, a dead one skipped (worker/relays)


@dataclass
class Result:
    disposition: Disposition
    envelope: Envelope | None
    reply: str = ""
    attempt: int = 1  # how often the store saw this key claimed


@dataclass
class Delivery:
    """One job on its way through the pipeline: checked, claimed, built, sent, concluded. Each
    step records its failure in ``error`` instead of raising, so a batch goes on without it."""
    body: bytes
    attempt: int | Callable[[], int]
    touch: Callable[[], object] = lambda: None
    envelope: Envelope | None = None
    ref: str = ""
    claiming: bool = False
    claimed: bool = False
    claims: int = 1
    error: BaseException | None = None
    reply: str = ""
    sender: str = ""
    recipients: Sequence[str] = ()
    message: bytes = b""
    subject: str = ""  # the built message's Subject, for the console's log (worker/web/subjects.py)
    job: Reserved | None = None
    started: float = 0.0
    already_sent: bool = False  # this process sent it before and could not record it then
    leader: "Delivery | None" = None  # a copy of a key this process has in hand: it ends as that one does

    @property
    def ready(self) -> bool:
        """Claimed and built, nothing failed: the message may go."""
        return self.error is None and self.claimed and bool(self.message)


def log_result(result: Result, *, job_id: int, tube: str, attempt: int, started: float,
               mask_addresses: bool = True) -> None:
    logs.events("job", [job_event(result, job_id=job_id, tube=tube, attempt=attempt, started=started,
                                  mask_addresses=mask_addresses)])


def job_event(result: Result, *, job_id: int, tube: str, attempt: int, started: float,
              mask_addresses: bool = True) -> tuple[str, dict[str, object]]:
    """A job's log line: its level and fields."""
    envelope = result.envelope
    d = result.disposition
    fields: dict[str, object] = {
        "job": job_id, "tube": tube, "attempt": attempt, "outcome": d.outcome,
        "action": d.action, "duration_ms": round((time.monotonic() - started) * 1000, 2),
    }
    shown = mask_text if mask_addresses else str  # fan-out keys, replies and reasons hold addresses
    if envelope is not None:
        fields["key"] = shown(envelope.id)
        fields["template"] = envelope.template
        if envelope.created_at:
            fields["age_ms"] = round((time.time() - envelope.created_at) * 1000, 1)  # enqueue -> now
        to = [r.address for r in envelope.to[:3]]
        fields["to"] = [mask(a) for a in to] if mask_addresses else to
    if d.reason:
        fields["reason"] = shown(d.reason)
    if d.delay:
        fields["delay"] = d.delay
    if result.reply:
        fields["reply"] = shown(result.reply)
    level = "info" if d.outcome in (Fate.SENT, Fate.SKIPPED) else "warning"
    if d.outcome in (Fate.POISON, Fate.EXHAUSTED):
        level = "error"
    return level, fields
