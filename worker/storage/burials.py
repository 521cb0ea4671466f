"""Why jobs were buried (beanstalkd keeps no reason): the ``failures`` table (migration 1),
written when a job is buried and read by ``beanmail buried`` and the console."""

from __future__ import annotations

import time

from .database import Database
from .values import storable_text

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE failures (
        server TEXT NOT NULL,
        job_id BIGINT NOT NULL,
        tube TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- poison | exhausted
        reason TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX failures_job ON failures (server, job_id, created_at)
    """,
}


class Burials:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_failure(self, server: str, job_id: int, tube: str, outcome: str, reason: str,
                       body: bytes) -> None:
        self.db.run(
            "INSERT INTO failures (server, job_id, tube, outcome, reason, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (server, job_id, storable_text(tube), outcome, storable_text(reason),
             storable_text(body[:65536].decode("utf-8", "replace")), time.time()),
        )

    def failure(self, server: str, job_id: int) -> tuple[str, str, float] | None:
        return self.db.one(
            "SELECT outcome, reason, created_at FROM failures WHERE server = ? AND job_id = ?"
            " ORDER BY created_at DESC LIMIT 1", (server, job_id))

    def failed_job_ids(self, server: str, limit: int = 200) -> list[int]:
        rows = self.db.all(
            "SELECT job_id FROM failures WHERE server = ? GROUP BY job_id ORDER BY job_id DESC LIMIT ?",
            (server, limit))
        return [r[0] for r in rows]

    def failures_of(self, server: str, job_id: int) -> list[tuple[str, str, str, str, float]]:
        """Every time the job was buried: (tube, outcome, reason, body, created_at), oldest first."""
        return [tuple(r) for r in self.db.all(
            "SELECT tube, outcome, reason, body, created_at FROM failures WHERE server = ? AND job_id = ?"
            " ORDER BY created_at", (server, job_id))]

    def failures_mentioning(self, text: str, limit: int = 20) -> list[tuple[int, str, str, str, float]]:
        """Buried records whose body holds ``text`` (a key): (job_id, tube, outcome, reason, created_at)."""
        return [tuple(r) for r in self.db.all(
            "SELECT job_id, tube, outcome, reason, created_at FROM failures WHERE body LIKE ?"
            " ORDER BY created_at DESC LIMIT ?", (f"%{text}%", limit))]
