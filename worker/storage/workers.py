"""The worker registry's tables (``workers``, ``disabled``; migration 40) and the two questions
the ledger asks of them: does a process still live, and mark one found dead.

worker/registry.py writes the heartbeats and the disable list through the store's public
``execute``/``one``/``all``; this module owns the schema and what other owners need to know.
"""

from __future__ import annotations

from .database import Database

MIGRATIONS: dict[int, str] = {
    40: """
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,            -- host:pid
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        tubes TEXT NOT NULL,
        version TEXT NOT NULL,
        state TEXT NOT NULL,            -- running | disabled | stopped | lost
        started_at DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        jobs_done BIGINT NOT NULL DEFAULT 0,
        current_job TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE disabled (
        target TEXT PRIMARY KEY,        -- a host name, or host:pid
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
}


class Workers:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lives(self, process: str, now: float, lost_after: float) -> bool:
        """The registry heard from this process within ``lost_after`` seconds."""
        row = self.db.execute("SELECT state, last_seen FROM workers WHERE id = ?", (process,)).fetchone()
        return row is not None and row[0] in ("running", "disabled") and row[1] >= now - lost_after

    def mark_dead(self, process: str) -> None:
        """A process found dead by its journal's lock: the registry need not wait for its
        heartbeat to stop."""
        self.db.execute("UPDATE workers SET state = 'lost' WHERE id = ? AND state = 'running'", (process,))
