"""Per-domain connection slots across the fleet: the ``mx_slots`` table (migration 41). A worker
delivering directly to a domain's MX holds one of the fleet's ``cap`` slots per open connection."""

from __future__ import annotations

import time

from .database import Database

MIGRATIONS: dict[int, str] = {
    41: """
    CREATE TABLE mx_slots (
        domain TEXT NOT NULL,           -- a recipient domain delivered to directly
        holder TEXT NOT NULL,           -- host:pid:session: one open connection of the fleet
        expires DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, holder)
    )
    """,
}


class MxSlots:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take_mx_slot(self, domain: str, holder: str, cap: int, lease: float) -> bool:
        """One of the fleet's ``cap`` connections to ``domain`` for ``holder`` (renewed if it has
        it already); False when all are held. A slot not renewed for ``lease`` seconds is free."""
        now = time.time()
        db = self.db
        with db.transaction():
            db.turn(f"mx_slots:{domain}")
            db.execute("DELETE FROM mx_slots WHERE domain = ? AND expires <= ?", (domain, now))
            if db.execute("UPDATE mx_slots SET expires = ? WHERE domain = ? AND holder = ?",
                          (now + lease, domain, holder)).rowcount:
                return True
            (held,) = db.execute("SELECT count(*) FROM mx_slots WHERE domain = ?", (domain,)).fetchone()
            if held >= cap:
                return False
            db.execute("INSERT INTO mx_slots (domain, holder, expires) VALUES (?, ?, ?)", (domain, holder, now + lease))
        return True

    def drop_mx_slot(self, domain: str, holder: str) -> None:
        self.db.run("DELETE FROM mx_slots WHERE domain = ? AND holder = ?", (domain, holder))
