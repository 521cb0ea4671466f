"""The suppression list: the ``suppression`` table (migrations 1 and 14), who is held back, by
which source, until when, and the console's counts and searches of it.

A suppression in force has expires_at 0 (for good) or in the future (a soft bounce's, which
lapses by itself). How much each source holds back, for the pipeline's check: bounce and
operator stop every message; complaint, unsubscribe and soft-bounce let urgent mail through.
"""

from __future__ import annotations

import time
from typing import Sequence

from .database import Database

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE suppression (
        address TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,           -- bounce | unsubscribe | operator
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
    14: """
    ALTER TABLE suppression ADD COLUMN expires_at DOUBLE PRECISION NOT NULL DEFAULT 0
    """,
}
STRENGTH = {"bounce": 3, "operator": 3, "complaint": 2, "unsubscribe": 2, "soft-bounce": 1}
IN_FORCE = "(expires_at = 0 OR expires_at > ?)"


class Suppression:
    def __init__(self, db: Database) -> None:
        self.db = db

    def suppressed(self, address: str) -> tuple[str, str] | None:
        row = self.db.one(f"SELECT source, reason FROM suppression WHERE address = ? AND {IN_FORCE}",
                          (address.lower(), time.time()))
        return (row[0], row[1]) if row else None

    def suppressed_many(self, addresses: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``suppressed`` for a batch's recipients in one query, by lower-cased address."""
        now = time.time()
        rows = self.db.all_in("SELECT address, source, reason, expires_at FROM suppression WHERE address IN ({marks})",
                              {a.lower() for a in addresses})
        return {row[0]: (row[1], row[2]) for row in rows if not row[3] or row[3] > now}

    def suppress(self, address: str, reason: str, source: str, *, until: float = 0.0) -> bool:
        """Suppress ``address`` (``until``: when it lapses, 0 for good). A suppression in force that
        holds back more is kept (a soft bounce does not turn a hard bounce into one that lapses, nor
        an unsubscribe let urgent mail reach an address that hard-bounced); True if written."""
        address, now = address.lower(), time.time()
        strength = STRENGTH.get(source, 3)
        with self.db.transaction():
            row = self.db.execute("SELECT source, expires_at FROM suppression WHERE address = ?",
                                  (address,)).fetchone()
            if row is not None and (not row[1] or row[1] > now):
                held = STRENGTH.get(row[0], 3)
                if held > strength or (held == strength and not row[1] and until):
                    return False
            self.db.execute(
                "INSERT INTO suppression (address, reason, source, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at",
                (address, reason, source, now, until))
        return True

    def unsuppress(self, address: str) -> bool:
        return self.db.run("DELETE FROM suppression WHERE address = ?", (address.lower(),)) > 0

    def suppression_list(self) -> list[tuple[str, str, str, float, float]]:
        """The suppressions in force: (address, source, reason, since, until; 0: for good)."""
        return [tuple(r) for r in self.db.all(
            f"SELECT address, source, reason, created_at, expires_at FROM suppression WHERE {IN_FORCE}"
            " ORDER BY address", (time.time(),))]

    def suppression_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.db.all(
            f"SELECT source, count(*) FROM suppression WHERE {IN_FORCE} GROUP BY source", (time.time(),))}

    def suppression_search(self, text: str = "", limit: int = 200) -> list[tuple[str, str, str, float, float]]:
        """Suppressions in force whose address contains ``text`` (any case), newest first:
        (address, source, reason, since, until; 0: for good)."""
        return [tuple(r) for r in self.db.all(
            f"SELECT address, source, reason, created_at, expires_at FROM suppression WHERE address LIKE ?"
            f" AND {IN_FORCE} ORDER BY created_at DESC LIMIT ?", (f"%{text.lower()}%", time.time(), limit))]
