"""Large job bodies stored by reference: the ``blobs`` table (migration 3), which producer/blobs.py
writes (and creates the same way, ``IF NOT EXISTS``) and the worker reads and deletes."""

from __future__ import annotations

from .database import Database

MIGRATIONS: dict[int, str] = {
    3: """
    CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,            -- sha256:<hex> of the data (producer.blobs writes them)
        data {blob} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
}


class Blobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def blob(self, ref: str) -> bytes | None:
        """A job body a producer stored by reference (``producer.blobs``)."""
        row = self.db.one("SELECT data FROM blobs WHERE id = ?", (ref,))
        return bytes(row[0]) if row else None

    def delete_blob(self, ref: str) -> None:
        self.db.run("DELETE FROM blobs WHERE id = ?", (ref,))
