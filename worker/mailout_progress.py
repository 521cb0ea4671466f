"""A mailout's progress by key: how many of its recipients were sent, bounced, skipped or failed,
and how many are left, read from the delivery log (each recipient's key is ``<mailout key>:<address>``,
worker/fanout.py) and, for the total, from the mailout's record (producer/schedule.py: a
scheduled mailout, or one the Django admin action queued). The Django admin's progress column,
``beanmail mailout progress KEY`` and the console call ``mailout_progress``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from producer.schedule import TABLES

from .store import Store

FAILED = ("exhausted", "poison")
PENDING = ("claimed", "deferred", "in_doubt")


@dataclass(frozen=True)
class Progress:
    key: str
    state: str  # the record's: scheduled, released, queued, cancelled, ...; "" when none was kept
    total: int | None  # recipients, when the mailout was recorded; None otherwise
    sent: int
    bounced: int
    skipped: int  # suppressed, unsubscribed, not visible, duplicates, collected into a digest
    failed: int  # exhausted or poison: buried, an operator's to look at
    pending: int  # being sent or waiting out a retry
    left: int  # not yet at an end: the total less sent, bounced, skipped and failed (pending without a total)
    held: int  # recipients of a scheduled mailout still in the store, not yet due

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mailout_progress(store: Store, key: str) -> Progress:
    """One mailout's figures. Two queries: a range scan of the delivery log's primary key on
    SQLite, a scan of it on PostgreSQL (a ``left()`` match, whatever the database's collation)."""
    for statement in TABLES:  # a store no scheduled mailout has touched yet
        store.execute(statement.format(blob="BYTEA" if _postgres(store) else "BLOB"))
    prefix = f"{key}:"
    if _postgres(store):
        rows = store.all("SELECT outcome, count(*) FROM deliveries WHERE left(key, ?) = ? GROUP BY outcome",
                         (len(prefix), prefix))
    else:
        rows = store.all("SELECT outcome, count(*) FROM deliveries WHERE key >= ? AND key < ? GROUP BY outcome",
                         (prefix, f"{key};"))
    counts = {outcome: int(n) for outcome, n in rows}
    record = store.one("SELECT state, recipients FROM mailouts WHERE key = ?", (key,))
    held = store.one("SELECT coalesce(sum(recipients), 0) FROM mailout_chunks WHERE key = ?", (key,))
    sent, bounced, skipped = counts.get("sent", 0), counts.get("bounced", 0), counts.get("skipped", 0)
    failed = sum(counts.get(o, 0) for o in FAILED)
    pending = sum(counts.get(o, 0) for o in PENDING)
    total = int(record[1]) if record is not None else None
    state = str(record[0]) if record is not None else ""
    if total is not None and state != "cancelled":
        left = max(0, total - sent - bounced - skipped - failed)
    else:
        left = pending
    return Progress(key, state, total, sent, bounced, skipped, failed, pending, left, int(held[0]) if held else 0)


def _postgres(store: Store) -> bool:
    return store.location.startswith(("postgresql://", "postgres://"))
