"""Per-domain rate limits shared by every worker on the store: the ``rate_slots`` and
``rate_bookings`` tables (migration 2). A message over the rate gets a booked slot of its own
and comes back to it."""

from __future__ import annotations

import time

from .database import Database

MIGRATIONS: dict[int, str] = {
    2: """
    CREATE TABLE rate_slots (
        domain TEXT PRIMARY KEY,
        next_at DOUBLE PRECISION NOT NULL -- the earliest time the next message may go
    );
    CREATE TABLE rate_bookings (
        key TEXT PRIMARY KEY,           -- a job released to come back at its booked slot
        slot_at DOUBLE PRECISION NOT NULL
    )
    """,
}


class RateSlots:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take_slot(self, domain: str, rate: float, key: str, now: float | None = None) -> float:
        """A send slot for ``domain`` at ``rate`` messages/s, shared by every worker on this store.
        Returns 0 when the message may go now; otherwise the slot is booked for ``key`` and the
        seconds until it are returned, so the job comes back to a slot of its own."""
        now = time.time() if now is None else now
        db = self.db
        with db.transaction():
            booked = db.execute("SELECT slot_at FROM rate_bookings WHERE key = ?", (key,)).fetchone()
            if booked is not None:
                if booked[0] <= now + 0.01:
                    db.execute("DELETE FROM rate_bookings WHERE key = ?", (key,))
                    return 0.0
                return float(booked[0] - now)
            db.execute("INSERT INTO rate_slots (domain, next_at) VALUES (?, ?) ON CONFLICT (domain) DO NOTHING",
                       (domain, now))
            (next_at,) = db.execute("SELECT next_at FROM rate_slots WHERE domain = ?" + db.dialect.for_update,
                                    (domain,)).fetchone()
            slot = max(next_at, now)
            db.execute("UPDATE rate_slots SET next_at = ? WHERE domain = ?", (slot + 1.0 / rate, domain))
            if slot <= now + 0.01:
                return 0.0
            db.execute("DELETE FROM rate_bookings WHERE slot_at < ?", (now - 3600,))
            db.execute("INSERT INTO rate_bookings (key, slot_at) VALUES (?, ?)", (key, slot))
        return float(slot - now)
