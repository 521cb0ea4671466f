"""The digest tables (migrations 30 and 31): preferences, collected items, the quiet-hours flag.

Kept small by design: an item lives from its collection until its digest job is queued (the
job then carries it), so the tables hold only what is waiting. Collecting records the key as
done through the ledger's public methods, in the same transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

from producer.prefs import Preferences

from ..outcomes import Skipped
from .database import Database
from .ledger import FINAL, Ledger

MIGRATIONS: dict[int, str] = {
    30: """
    CREATE TABLE IF NOT EXISTS digest_prefs (
        address TEXT PRIMARY KEY,       -- lowercased (producer/prefs.py creates it the same way)
        mode TEXT NOT NULL DEFAULT '',  -- '' (the job decides) | immediate | hourly | daily | weekly | off
        timezone TEXT NOT NULL DEFAULT '',
        quiet_start INTEGER NOT NULL DEFAULT -1, -- minutes after local midnight, -1: none
        quiet_end INTEGER NOT NULL DEFAULT -1,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE digest_items (
        key TEXT PRIMARY KEY,           -- the notification's idempotency key: collected once
        recipient TEXT NOT NULL,
        grp TEXT NOT NULL,              -- the template, or * (one digest across templates)
        due_at DOUBLE PRECISION NOT NULL, -- the end of the period it was collected in
        created_at DOUBLE PRECISION NOT NULL,
        item TEXT NOT NULL,             -- JSON (worker/digest/collect.py)
        batch TEXT NOT NULL DEFAULT '', -- the digest's key once closed, '' while waiting
        batched_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX digest_items_due ON digest_items (batch, due_at);
    CREATE INDEX digest_items_group ON digest_items (recipient, grp, batch);
    CREATE TABLE digest_flags (
        name TEXT PRIMARY KEY,          -- quiet_lifted: mail made before it is no longer held
        at DOUBLE PRECISION NOT NULL
    )
    """,
    31: """
    DROP INDEX digest_items_group;
    CREATE INDEX digest_items_group ON digest_items (recipient, grp, batch, due_at)
    """,
}
CLOSER_LOCK = 716230  # closers on several hosts take turns (PostgreSQL; SQLite's BEGIN IMMEDIATE does the same)
_PREFS = "SELECT address, mode, timezone, quiet_start, quiet_end FROM digest_prefs"


class HasLedger(Protocol):
    """What DigestRecords needs of the store it is given (worker/store.py's Store)."""
    db: Database
    ledger: Ledger


@dataclass(frozen=True)
class Batch:
    """One closed digest: its key, whom it goes to, the newest items (newest first) and how
    many there were in all."""

    key: str
    recipient: str
    group: str
    due_at: float
    items: list[tuple[float, dict[str, Any]]]
    total: int


class DigestRecords:
    def __init__(self, store: HasLedger) -> None:
        self.store = store
        self.db = store.db
        self.ledger = store.ledger

    # -- preferences ----------------------------------------------------------------------------
    def preferences(self, address: str) -> Preferences | None:
        row = self.db.one(_PREFS + " WHERE address = ?", (address.lower(),))
        return Preferences(*row) if row else None

    def preferences_many(self, addresses: Sequence[str]) -> dict[str, Preferences]:
        """``preferences`` of a batch's recipients in one query, by lower-cased address."""
        rows = self.db.all_in(_PREFS + " WHERE address IN ({marks})", {a.lower() for a in addresses})
        return {row[0]: Preferences(*row) for row in rows}

    def set_preferences(self, p: Preferences) -> None:
        self.db.run(
            "INSERT INTO digest_prefs (address, mode, timezone, quiet_start, quiet_end, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET mode = excluded.mode,"
            " timezone = excluded.timezone, quiet_start = excluded.quiet_start, quiet_end = excluded.quiet_end,"
            " updated_at = excluded.updated_at",
            (p.address.lower(), p.mode, p.timezone, p.quiet_start, p.quiet_end, time.time()))

    def clear_preferences(self, address: str) -> bool:
        return self.db.run("DELETE FROM digest_prefs WHERE address = ?", (address.lower(),)) > 0

    def all_preferences(self, limit: int = 1000) -> list[Preferences]:
        return [Preferences(*r) for r in self.db.all(_PREFS + " ORDER BY address LIMIT ?", (limit,))]

    # -- collecting -----------------------------------------------------------------------------
    def collect(self, key: str, recipient: str, group: str, template: str, due_at: float, created_at: float,
                item: dict[str, Any], reason: str) -> bool:
        """Collect one notification, and record its key as done (skipped, with ``reason``) in the
        same transaction: a job run again after a crash is a duplicate, never a second item.
        Raises Skipped for a key that already ended; False (nothing collected) while a worker
        holds the key's claim, so the ordinary claim decides."""
        with self.db.transaction():
            outcome = self.ledger.outcome_for_update(key)
            if outcome in FINAL:
                raise Skipped(f"duplicate: key already {outcome}")
            if outcome in ("claimed", "in_doubt"):
                return False
            self.db.execute("INSERT INTO digest_items (key, recipient, grp, due_at, created_at, item)"
                            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                            (key, recipient, group, due_at, created_at, json.dumps(item, ensure_ascii=False)))
            self.ledger.skip(key, recipient, template, reason)
        return True

    # -- quiet hours lifted (`beanmail digest flush --all`) -------------------------------------
    def lift_quiet_hours(self, at: float) -> None:
        self.db.run("INSERT INTO digest_flags (name, at) VALUES ('quiet_lifted', ?)"
                    " ON CONFLICT (name) DO UPDATE SET at = excluded.at", (at,))

    def quiet_lifted(self) -> float:
        row = self.db.one("SELECT at FROM digest_flags WHERE name = 'quiet_lifted'")
        return float(row[0]) if row else 0.0

    # -- closing --------------------------------------------------------------------------------
    def assign(self, cutoff: float, now: float, make_key: Any, after: str = "",
               limit: int = 500) -> tuple[list[str], str | None]:
        """Close up to ``limit`` (recipient, group) pairs, from recipient ``after`` on, with items
        due by ``cutoff``: their waiting items get the digest's key in one transaction, so of two
        closers (two hosts) each item goes to exactly one. Returns the keys and the last recipient
        looked at (the next page starts there), None when there was none."""
        db = self.db
        keys: list[str] = []
        with db.transaction():
            db.turn(CLOSER_LOCK)
            # `batch || ''`: walk the (recipient, grp, ...) index in order, not the due one
            groups = db.execute(
                "SELECT recipient, grp, max(due_at) FROM digest_items WHERE recipient >= ? AND batch || '' = ''"
                " AND due_at <= ? GROUP BY recipient, grp ORDER BY recipient, grp LIMIT ?",
                (after, cutoff, limit)).fetchall()
            for recipient, group, due_at in groups:
                key = make_key(recipient, group, float(due_at))
                if db.execute("UPDATE digest_items SET batch = ?, batched_at = ? WHERE recipient = ? AND grp = ?"
                              " AND batch = '' AND due_at <= ?", (key, now, recipient, group, cutoff)).rowcount:
                    keys.append(key)
        return keys, (groups[-1][0] if groups else None)

    def stale(self, before: float, limit: int = 500) -> list[str]:
        """Digests closed before ``before`` whose items are still here: their closer stopped
        between closing and queueing. Queued again under the same key (the claim dedupes)."""
        return [r[0] for r in self.db.all(
            "SELECT DISTINCT batch FROM digest_items WHERE batch > '' AND batched_at <= ? LIMIT ?", (before, limit))]

    def batches(self, keys: Sequence[str], newest: int) -> list[Batch]:
        if not keys:
            return []
        marks = ", ".join("?" for _ in keys)
        rows = self.db.all(
            "SELECT batch, recipient, grp, due_at, created_at, item, n FROM (SELECT batch, recipient, grp, due_at,"
            " created_at, item, row_number() OVER (PARTITION BY batch ORDER BY created_at DESC, key DESC) AS rn,"
            f" count(*) OVER (PARTITION BY batch) AS n FROM digest_items WHERE batch IN ({marks})) t"
            " WHERE rn <= ? ORDER BY batch, rn", (*keys, newest))
        out: dict[str, Batch] = {}
        for key, recipient, group, due_at, created_at, item, n in rows:
            b = out.get(key)
            if b is None:
                b = out[key] = Batch(key, recipient, group, float(due_at), [], int(n))
            b.items.append((float(created_at), json.loads(item)))
            if due_at > b.due_at:
                out[key] = Batch(key, recipient, group, float(due_at), b.items, b.total)
        return list(out.values())

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        return self.db.run(f"DELETE FROM digest_items WHERE batch IN ({', '.join('?' for _ in keys)})", keys)

    def waiting(self) -> dict[str, Any]:
        row = self.db.one("SELECT count(*), count(DISTINCT recipient), min(due_at), min(created_at)"
                          " FROM digest_items WHERE batch = ''")
        closing = self.db.one("SELECT count(DISTINCT batch) FROM digest_items WHERE batch > ''")
        return {"items": int(row[0]), "recipients": int(row[1]), "next_due": row[2], "oldest": row[3],
                "closing": int(closing[0])}
