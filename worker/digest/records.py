"""The store's digest tables (migration 30): preferences, collected items, the quiet-hours flag.

Kept small by design: an item lives from its collection until its digest job is queued (the
job then carries it), so the tables hold only what is waiting. Written over the delivery store's
own transaction and outage handling, in the SQL both engines understand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from producer.prefs import Preferences

from ..outcomes import Skipped
from ..store import FINAL, Store, _Postgres


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
    def __init__(self, store: Store) -> None:
        self.store = store
        self.postgres = isinstance(store._db, _Postgres)

    # -- preferences ----------------------------------------------------------------------------
    def preferences(self, address: str) -> Preferences | None:
        row = self.store._one("SELECT address, mode, timezone, quiet_start, quiet_end FROM digest_prefs"
                              " WHERE address = ?", (address.lower(),))
        return Preferences(*row) if row else None

    def preferences_many(self, addresses: Sequence[str]) -> dict[str, Preferences]:
        """``preferences`` of a batch's recipients in one query, by lower-cased address."""
        rows = self.store.all_in("SELECT address, mode, timezone, quiet_start, quiet_end FROM digest_prefs"
                                 " WHERE address IN ({marks})", {a.lower() for a in addresses})
        return {row[0]: Preferences(*row) for row in rows}

    def set_preferences(self, p: Preferences) -> None:
        self.store._run(
            "INSERT INTO digest_prefs (address, mode, timezone, quiet_start, quiet_end, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET mode = excluded.mode,"
            " timezone = excluded.timezone, quiet_start = excluded.quiet_start, quiet_end = excluded.quiet_end,"
            " updated_at = excluded.updated_at",
            (p.address.lower(), p.mode, p.timezone, p.quiet_start, p.quiet_end, time.time()))

    def clear_preferences(self, address: str) -> bool:
        return self.store._run("DELETE FROM digest_prefs WHERE address = ?", (address.lower(),)) > 0

    def all_preferences(self, limit: int = 1000) -> list[Preferences]:
        return [Preferences(*r) for r in self.store._all(
            "SELECT address, mode, timezone, quiet_start, quiet_end FROM digest_prefs ORDER BY address LIMIT ?",
            (limit,))]

    # -- collecting -----------------------------------------------------------------------------
    def collect(self, key: str, recipient: str, group: str, template: str, due_at: float, created_at: float,
                item: dict[str, Any], reason: str) -> bool:
        """Collect one notification, and record its key as done (skipped, with ``reason``) in the
        same transaction: a job run again after a crash is a duplicate, never a second item.
        Raises Skipped for a key that already ended; False (nothing collected) while a worker
        holds the key's claim, so the ordinary claim decides."""
        db = self.store._db
        now = time.time()
        with self.store._transaction():
            row = db.execute("SELECT outcome FROM deliveries WHERE key = ?" + db.for_update, (key,)).fetchone()
            if row is not None and row[0] in FINAL:
                raise Skipped(f"duplicate: key already {row[0]}")
            if row is not None and row[0] in ("claimed", "in_doubt"):
                return False
            db.execute("INSERT INTO digest_items (key, recipient, grp, due_at, created_at, item)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                       (key, recipient, group, due_at, created_at, json.dumps(item, ensure_ascii=False)))
            db.execute("INSERT INTO deliveries (key, recipient, template, outcome, reason, updated_at)"
                       " VALUES (?, ?, ?, 'skipped', ?, ?) ON CONFLICT (key) DO UPDATE SET outcome = 'skipped',"
                       " reason = excluded.reason, claimed_by = '', claim_expires = 0,"
                       " updated_at = excluded.updated_at",
                       (key, recipient, template, reason, now))
        return True

    # -- quiet hours lifted (`beanmail digest flush --all`) -------------------------------------
    def lift_quiet_hours(self, at: float) -> None:
        self.store._run("INSERT INTO digest_flags (name, at) VALUES ('quiet_lifted', ?)"
                        " ON CONFLICT (name) DO UPDATE SET at = excluded.at", (at,))

    def quiet_lifted(self) -> float:
        row = self.store._one("SELECT at FROM digest_flags WHERE name = 'quiet_lifted'")
        return float(row[0]) if row else 0.0

    # -- closing --------------------------------------------------------------------------------
    def assign(self, cutoff: float, now: float, make_key: Any, after: str = "",
               limit: int = 500) -> tuple[list[str], str | None]:
        """Close up to ``limit`` (recipient, group) pairs, from recipient ``after`` on, with items
        due by ``cutoff``: their waiting items get the digest's key in one transaction, so of two
        closers (two hosts) each item goes to exactly one. Returns the keys and the last recipient
        looked at (the next page starts there), None when there was none."""
        db = self.store._db
        keys: list[str] = []
        with self.store._transaction():
            if self.postgres:  # closers take turns; SQLite's BEGIN IMMEDIATE does the same
                db.execute("SELECT pg_advisory_xact_lock(716230)")
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
        return [r[0] for r in self.store._all(
            "SELECT DISTINCT batch FROM digest_items WHERE batch > '' AND batched_at <= ? LIMIT ?", (before, limit))]

    def batches(self, keys: Sequence[str], newest: int) -> list[Batch]:
        if not keys:
            return []
        marks = ", ".join("?" for _ in keys)
        rows = self.store._all(
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
        return self.store._run(f"DELETE FROM digest_items WHERE batch IN ({', '.join('?' for _ in keys)})", keys)

    def waiting(self) -> dict[str, Any]:
        row = self.store._one("SELECT count(*), count(DISTINCT recipient), min(due_at), min(created_at)"
                              " FROM digest_items WHERE batch = ''")
        closing = self.store._one("SELECT count(DISTINCT batch) FROM digest_items WHERE batch > ''")
        return {"items": int(row[0]), "recipients": int(row[1]), "next_due": row[2], "oldest": row[3],
                "closing": int(closing[0])}
