"""Delivery events' records (worker/events): what a sent message's later events name
(``event_refs``, migration 60), what a reply address's token names (``reply_messages``) and the
replies `beanmail inbound` read (``inbound``, migration 61)."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from .database import Database

MIGRATIONS: dict[int, str] = {
    60: """
    CREATE TABLE event_refs (
        key TEXT PRIMARY KEY,           -- a sent message's key: its events after the send (bounces, complaints) name these
        template TEXT NOT NULL,
        entities TEXT NOT NULL,         -- the job's entity references, JSON
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX event_refs_created ON event_refs (created_at)
    """,
    61: """
    CREATE TABLE reply_messages (
        token TEXT PRIMARY KEY,         -- the id part of a reply address's token (worker/events/replies.py)
        key TEXT NOT NULL,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        entities TEXT NOT NULL,         -- JSON
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE inbound (
        id TEXT PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,          -- replied | refused
        reason TEXT NOT NULL DEFAULT '',
        key TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '', -- the reply's From
        raw TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX inbound_received ON inbound (received_at)
    """,
}


class EventRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def remember_refs(self, rows: Sequence[tuple[str, str, str]], keep: float = 90 * 86400) -> None:
        """(key, template, entities JSON) of sent messages, for the events that come after the
        send; rows older than ``keep`` seconds go in the same transaction, now and then."""
        now = time.time()
        with self.db.transaction():
            self.db.execute_many("INSERT INTO event_refs (key, template, entities, created_at) VALUES (?, ?, ?, ?)"
                                 " ON CONFLICT (key) DO NOTHING",
                                 [(key, template, entities, now) for key, template, entities in rows])
            if rows and hash(rows[0][0]) % 1000 == 0:
                self.db.execute("DELETE FROM event_refs WHERE created_at < ?", (now - keep,))

    def refs_for(self, key: str) -> tuple[str, str] | None:
        """(template, entities JSON) remembered for ``key``."""
        row = self.db.one("SELECT template, entities FROM event_refs WHERE key = ?", (key,))
        return (row[0], row[1]) if row else None

    def remember_reply(self, token: str, key: str, recipient: str, template: str, entities: str) -> None:
        """What a reply address's token names, written before the message goes."""
        self.db.run("INSERT INTO reply_messages (token, key, recipient, template, entities, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO NOTHING",
                    (token, key, recipient.lower(), template, entities, time.time()))

    def reply_for(self, token: str) -> tuple[str, str, str, str] | None:
        """(key, recipient, template, entities JSON) of a reply token's message."""
        row = self.db.one("SELECT key, recipient, template, entities FROM reply_messages WHERE token = ?", (token,))
        return (row[0], row[1], row[2], row[3]) if row else None

    def record_inbound(self, *, outcome: str, reason: str = "", key: str = "", address: str = "", raw: str = "") -> str:
        """A message `beanmail inbound` read: passed on as an event, or refused and why."""
        inbound_id = f"{time.time_ns():x}{os.urandom(3).hex()}"
        self.db.run("INSERT INTO inbound (id, received_at, outcome, reason, key, address, raw)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (inbound_id, time.time(), outcome, reason[:2000].replace("\0", "\ufffd"), key, address.lower(),
                     raw[:262144].replace("\0", "\ufffd")))
        return inbound_id

    def inbound(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.all("SELECT id, received_at, outcome, reason, key, address FROM inbound"
                           " ORDER BY received_at DESC LIMIT ?", (limit,))
        return [dict(zip(("id", "received_at", "outcome", "reason", "key", "address"), r)) for r in rows]
