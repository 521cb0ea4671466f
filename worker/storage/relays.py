"""The relays' shared view (``relay_state``; migration 70): each worker process's reading of
each relay it sends through (up or skipped, bulk pace, queue length, held), one row per process
and relay. worker/relays/board.py decides what is written and how the rows add up.
"""

from __future__ import annotations

from typing import Any, Sequence

from .database import Database

MIGRATIONS: dict[int, str] = {
    70: """
    CREATE TABLE IF NOT EXISTS relay_state (
        process TEXT NOT NULL, relay TEXT NOT NULL, priorities TEXT NOT NULL, up INTEGER NOT NULL,
        skipped_until DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, pace DOUBLE PRECISION NOT NULL,
        sent_rate DOUBLE PRECISION NOT NULL, queue INTEGER NOT NULL, queue_error TEXT NOT NULL,
        held TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (process, relay)
    )
    """,
}

COLUMNS = ("relay", "priorities", "up", "skipped_until", "reason", "pace", "sent_rate", "queue", "queue_error",
           "held", "updated_at")


class RelayStates:
    def __init__(self, db: Database) -> None:
        self.db = db

    def write(self, process: str, rows: Sequence[Sequence[Any]], now: float) -> None:
        """This process's rows (``COLUMNS`` but ``updated_at``), in one transaction; rows a week
        old (processes long gone) go."""
        with self.db.transaction():
            self.db.execute_many(
                "INSERT INTO relay_state (process, relay, priorities, up, skipped_until, reason, pace, sent_rate,"
                " queue, queue_error, held, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (process, relay) DO UPDATE SET priorities = excluded.priorities, up = excluded.up,"
                " skipped_until = excluded.skipped_until, reason = excluded.reason, pace = excluded.pace,"
                " sent_rate = excluded.sent_rate, queue = excluded.queue, queue_error = excluded.queue_error,"
                " held = excluded.held, updated_at = excluded.updated_at",
                [(process, *row, now) for row in rows])
            self.db.execute("DELETE FROM relay_state WHERE updated_at < ?", (now - 7 * 86400,))

    def since(self, cutoff: float) -> list[tuple[Any, ...]]:
        """The rows (``COLUMNS``) written since ``cutoff``, by relay and time."""
        return [tuple(r) for r in self.db.all("SELECT " + ", ".join(COLUMNS) + " FROM relay_state"
                                              " WHERE updated_at >= ? ORDER BY relay, updated_at", (cutoff,))]
