"""A mailout's progress by its key: what its recipients' deliveries came to (the delivery log,
whose keys are ``<mailout key>:<address>``, worker/fanout.py) and what is still in beanstalkd
(recipient jobs waiting, and chunks not yet fanned out, counted by their recipients)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .. import ops
from ..settings import Settings
from ..store import Store
from . import figures
from .jobscan import scan

FINISHED = ("sent", "bounced", "skipped", "poison", "exhausted")


@dataclass
class Progress:
    key: str
    logged: Counter[str] = field(default_factory=Counter)  # the delivery log's rows by outcome
    waiting: int = 0  # recipient jobs ready, reserved or delayed
    buried: int = 0  # recipient jobs buried
    unexpanded: int = 0  # recipients in chunks not yet fanned out
    chunks: int = 0
    complete: bool = True  # False: beanstalkd holds more jobs than the scan looked at

    @property
    def sent(self) -> int:
        return self.logged["sent"]

    @property
    def bounced(self) -> int:
        return self.logged["bounced"]

    @property
    def left(self) -> int:
        return self.waiting + self.unexpanded

    @property
    def other(self) -> int:
        return sum(n for o, n in self.logged.items() if o in FINISHED and o not in ("sent", "bounced"))

    @property
    def total(self) -> int:
        return sum(self.logged[o] for o in FINISHED) + self.left + self.buried

    @property
    def found(self) -> bool:
        return bool(self.total or self.chunks or sum(self.logged.values()))


def progress(settings: Settings, store: Store, key: str) -> Progress:
    out = Progress(key)
    prefix = key + ":"
    # an exact prefix (no LIKE: a key may hold % or _), the same on SQLite and PostgreSQL
    for outcome, n in store.all("SELECT outcome, count(*) FROM deliveries WHERE substr(key, 1, ?) = ?"
                                " GROUP BY outcome", (len(prefix), prefix)):
        out.logged[outcome] += int(n)
    found = scan(settings, ops.TUBES, {"ready", "reserved", "delayed", "buried"})
    out.complete = found.complete
    for job in found.jobs:
        envelope = figures.envelope_of(job.body) or {}
        job_key = envelope.get("id")
        if not isinstance(job_key, str):
            continue
        if job_key.startswith(prefix):
            if job.state == "buried":
                out.buried += 1
            else:
                out.waiting += 1
        elif job_key.startswith(key + "#") and envelope.get("kind") == "mailout":
            to = envelope.get("to") if isinstance(envelope.get("to"), list) else []
            excluded = {str(a).lower() for a in envelope.get("exclude") or [] if isinstance(a, str)}
            out.chunks += 1
            out.unexpanded += sum(1 for r in to if not (isinstance(r, dict) and str(r.get("address", "")).lower()
                                                        in excluded))
    return out
