"""The worker registry's tables (``workers``, ``disabled``; migration 40): every statement on
them. worker/registry.py decides (heartbeats, disabling, who is lost); the ledger asks whether a
claim's holder still lives and marks one its journal shows dead.
"""

from __future__ import annotations

import time
from typing import Any

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


_COLUMNS = "id, host, pid, tubes, version, state, started_at, last_seen, jobs_done, current_job"


class Workers:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, worker: str, host: str, pid: int, tubes: str, version: str, now: float) -> None:
        """This process's row, running, its counters reset (a restarted id starts afresh)."""
        self.db.run(
            f"INSERT INTO workers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, 0, '')"
            " ON CONFLICT (id) DO UPDATE SET tubes = excluded.tubes,"
            " version = excluded.version, state = 'running', started_at = excluded.started_at,"
            " last_seen = excluded.last_seen, jobs_done = 0, current_job = ''",
            (worker, host, pid, tubes, version, now, now))

    def beat(self, worker: str, state: str, jobs_done: int, current_job: str, now: float | None = None) -> None:
        """Say the process lives (or, ``state`` stopped or disabled, its last word)."""
        self.db.run("UPDATE workers SET last_seen = ?, jobs_done = ?, current_job = ?, state = ? WHERE id = ?",
                    (time.time() if now is None else now, jobs_done, current_job, state, worker))

    def set_state(self, worker: str, state: str) -> None:
        self.db.run("UPDATE workers SET state = ? WHERE id = ?", (state, worker))

    def mark_lost(self, cutoff: float) -> list[str]:
        """Workers silent since ``cutoff`` (running, or disabled with a job in hand) marked lost."""
        lost = [r[0] for r in self.db.all("SELECT id FROM workers WHERE (state = 'running' OR (state = 'disabled'"
                                          " AND current_job != '')) AND last_seen < ?", (cutoff,))]
        for worker in lost:
            self.db.run("UPDATE workers SET state = 'lost' WHERE id = ? AND last_seen < ?", (worker, cutoff))
        return lost

    def rows(self) -> list[tuple[Any, ...]]:
        """Every worker's row (``_COLUMNS``), by host and pid."""
        return [tuple(r) for r in self.db.all(f"SELECT {_COLUMNS} FROM workers ORDER BY host, pid")]

    # -- the disable list -----------------------------------------------------------------------
    def is_disabled(self, *targets: str) -> bool:
        """Whether any of ``targets`` (a host, host:pid, a worker id) is on the disable list."""
        row = self.db.one(f"SELECT count(*) FROM disabled WHERE target IN ({', '.join('?' * len(targets))})",
                          targets)
        return bool(row and row[0])

    def disable(self, target: str) -> None:
        self.db.run("INSERT INTO disabled (target, created_at) VALUES (?, ?) ON CONFLICT (target) DO NOTHING",
                    (target, time.time()))

    def enable(self, target: str) -> bool:
        """Off the disable list; the rows it had stopped say "stopped" again, not "disabled"."""
        lifted = self.db.run("DELETE FROM disabled WHERE target = ?", (target,)) > 0
        self.db.run("UPDATE workers SET state = 'stopped' WHERE state = 'disabled' AND (host = ? OR id = ?"
                    " OR host || ':' || CAST(pid AS TEXT) = ?)", (target, target, target))
        return lifted

    def prune(self, cutoff: float) -> int:
        """Stopped and lost workers' rows last seen before ``cutoff`` go; how many."""
        return self.db.run("DELETE FROM workers WHERE state IN ('stopped', 'lost') AND last_seen < ?", (cutoff,))

    def disabled_targets(self) -> list[str]:
        return [r[0] for r in self.db.all("SELECT target FROM disabled ORDER BY target")]

    def lives(self, process: str, now: float, lost_after: float) -> bool:
        """The registry heard from this process within ``lost_after`` seconds."""
        row = self.db.execute("SELECT state, last_seen FROM workers WHERE id = ?", (process,)).fetchone()
        return row is not None and row[0] in ("running", "disabled") and row[1] >= now - lost_after

    def mark_dead(self, process: str) -> None:
        """A process found dead by its journal's lock: the registry need not wait for its
        heartbeat to stop."""
        self.db.execute("UPDATE workers SET state = 'lost' WHERE id = ? AND state = 'running'", (process,))
