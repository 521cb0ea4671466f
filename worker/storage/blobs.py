"""Large job bodies stored by reference: the ``blobs`` table (migration 3), which producer/blobs.py
writes (and creates the same way, ``IF NOT EXISTS``) and the worker reads and deletes; and the
store's name for itself (``store_identity``, migration 4), which a ref job carries, so a worker
reading another store than the producer wrote to can say so."""

from __future__ import annotations

import time

from producer.blobs import IDENTITY_TABLE, PUT, read_or_make_identity, ref_for

from .database import Database

MIGRATIONS: dict[int, str] = {
    3: """
    CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,            -- sha256:<hex> of the data (producer.blobs writes them)
        data {blob} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
    4: IDENTITY_TABLE,
}


class Blobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def blob(self, ref: str) -> bytes | None:
        """A job body a producer stored by reference (``producer.blobs``)."""
        row = self.db.one("SELECT data FROM blobs WHERE id = ?", (ref,))
        return bytes(row[0]) if row else None

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` by its content (as producer.blobs does); its reference."""
        ref = ref_for(data)
        self.db.run(PUT, (ref, bytes(data), time.time()))
        return ref

    def delete_blob(self, ref: str) -> None:
        self.db.run("DELETE FROM blobs WHERE id = ?", (ref,))

    def identity(self) -> str:
        """The store's name for itself, the same for every process (made by the first to ask)."""
        if getattr(self, "_identity", None) is None:
            self._identity = read_or_make_identity(self.db.one, self.db.run)
        return self._identity
