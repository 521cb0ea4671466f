"""Feedback after the send: return-path tokens (``feedback_messages``), bounce and complaint
records (``bounces``), provider webhook ids seen (``webhook_events``) and the bulk brake
(``brake``); migrations 10 and 14. worker/feedback/ decides; this module records.

A bounce or complaint changes the delivery's own row through the ledger's public methods. The
brake's window reads the ledger's ``deliveries`` in a join (one query, read only): the one place
an owner reads another's table, kept because the brake asks it on every check.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .database import Database
from .ledger import Ledger

MIGRATIONS: dict[int, str] = {
    10: """
    CREATE TABLE feedback_messages (
        token TEXT PRIMARY KEY,         -- the id part of a VERP token (worker/feedback/verp.py)
        key TEXT NOT NULL,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        bulk INTEGER NOT NULL,          -- 1 for mail.bulk: what the brake judges
        complained INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX feedback_messages_bulk ON feedback_messages (bulk, created_at);
    CREATE TABLE bounces (
        id TEXT PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,           -- pipe | imap | webhook:<provider>
        kind TEXT NOT NULL,             -- dsn | arf | detector | webhook
        classification TEXT NOT NULL,   -- hard | soft | complaint | delayed | unmatched | ignored
        address TEXT NOT NULL DEFAULT '',
        key TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        raw TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX bounces_address ON bounces (address, classification, received_at);
    CREATE INDEX bounces_received ON bounces (received_at);
    CREATE TABLE brake (
        name TEXT PRIMARY KEY,          -- bulk
        engaged INTEGER NOT NULL,
        reason TEXT NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL
    )
    """,
    14: """
    CREATE TABLE webhook_events (
        provider TEXT NOT NULL,         -- ses | sendgrid | postmark | mailgun
        event_id TEXT NOT NULL,         -- the provider's own id of the event (SNS: its MessageId)
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (provider, event_id)
    );
    CREATE INDEX webhook_events_received ON webhook_events (received_at)
    """,
}


class FeedbackRecords:
    def __init__(self, db: Database, ledger: Ledger) -> None:
        self.db = db
        self.ledger = ledger

    # -- return paths ---------------------------------------------------------------------------
    def remember_message(self, token: str, key: str, recipient: str, template: str, bulk: bool) -> None:
        """What a VERP token names, written before the message goes (a bounce may outrun us)."""
        self.db.run("INSERT INTO feedback_messages (token, key, recipient, template, bulk, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET created_at = excluded.created_at",
                    (token, key, recipient, template, int(bulk), time.time()))

    def message_for_token(self, token: str) -> tuple[str, str, str, bool] | None:
        row = self.db.one("SELECT key, recipient, template, bulk FROM feedback_messages WHERE token = ?", (token,))
        return (row[0], row[1], row[2], bool(row[3])) if row else None

    # -- bounces and complaints -----------------------------------------------------------------
    def record_bounce(self, *, source: str, kind: str, classification: str, address: str = "", key: str = "",
                      status: str = "", detail: str = "", raw: str = "") -> str:
        bounce_id = f"{time.time_ns():x}{os.urandom(3).hex()}"
        self.db.run("INSERT INTO bounces (id, received_at, source, kind, classification, address, key, status,"
                    " detail, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (bounce_id, time.time(), source, kind, classification, address.lower(), key, status,
                     detail[:2000].replace("\0", "\ufffd"),  # PostgreSQL text holds no NUL
                     raw[:262144].replace("\0", "\ufffd")))
        return bounce_id

    def bounces(self, limit: int = 100, address: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE address = ?", [address.lower()]) if address else ("", [])
        rows = self.db.all(f"SELECT id, received_at, source, kind, classification, address, key, status, detail"
                           f" FROM bounces {where} ORDER BY received_at DESC LIMIT ?", (*args, limit))
        names = ("id", "received_at", "source", "kind", "classification", "address", "key", "status", "detail")
        return [dict(zip(names, r)) for r in rows]

    def bounce_raw(self, bounce_id: str) -> str | None:
        row = self.db.one("SELECT raw FROM bounces WHERE id = ?", (bounce_id,))
        return row[0] if row else None

    def soft_bounces(self, address: str, since: float) -> int:
        """The messages to ``address`` that soft-bounced since ``since``: one however many
        times a provider reported it (Mailgun posts a failure for each of its retries)."""
        row = self.db.one("SELECT count(DISTINCT key) FROM bounces WHERE address = ? AND classification = 'soft'"
                          " AND received_at >= ?", (address.lower(), since))
        return int(row[0])

    def note_complaint(self, token: str, key: str, reason: str) -> None:
        with self.db.transaction():
            self.db.execute("UPDATE feedback_messages SET complained = 1 WHERE token = ?", (token,))
            self.ledger.note_reason(key, reason)

    # -- provider webhooks ----------------------------------------------------------------------
    def first_webhook_event(self, provider: str, event_id: str, keep: float = 30 * 86400) -> bool:
        """Remember a provider's event id; False if it was seen before (a replay or a retry of a
        request already handled). Ids older than ``keep`` seconds are forgotten."""
        now = time.time()
        with self.db.transaction():
            self.db.execute("DELETE FROM webhook_events WHERE received_at < ?", (now - keep,))
            return self.db.execute(
                "INSERT INTO webhook_events (provider, event_id, received_at) VALUES (?, ?, ?)"
                " ON CONFLICT (provider, event_id) DO NOTHING", (provider, event_id[:500], now)).rowcount == 1

    def webhook_event_seen(self, provider: str, event_id: str) -> bool:
        return self.db.one("SELECT 1 FROM webhook_events WHERE provider = ? AND event_id = ?",
                           (provider, event_id[:500])) is not None

    # -- the bulk brake -------------------------------------------------------------------------
    def bulk_feedback(self, window: int, since: float = 0.0) -> tuple[int, int, int]:
        """(sent, bounced, complained) over the last ``window`` bulk messages sent after ``since``."""
        row = self.db.one(
            "SELECT count(*), coalesce(sum(CASE WHEN d.outcome = 'bounced' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(m.complained), 0) FROM (SELECT key, complained FROM feedback_messages"
            " WHERE bulk = 1 AND created_at > ? ORDER BY created_at DESC LIMIT ?) m"
            " JOIN deliveries d ON d.key = m.key WHERE d.outcome IN ('sent', 'bounced')", (since, window))
        return int(row[0]), int(row[1]), int(row[2])

    def brake(self, name: str = "bulk") -> tuple[bool, str, float]:
        """(engaged, reason, since): a brake never set is off since the beginning."""
        row = self.db.one("SELECT engaged, reason, changed_at FROM brake WHERE name = ?", (name,))
        return (bool(row[0]), row[1], float(row[2])) if row else (False, "", 0.0)

    def set_brake(self, engaged: bool, reason: str, name: str = "bulk") -> bool:
        """True when this call changed it (two workers tripping at once trip it once)."""
        return self.db.run(
            "INSERT INTO brake (name, engaged, reason, changed_at) VALUES (?, ?, ?, ?) ON CONFLICT (name)"
            " DO UPDATE SET engaged = excluded.engaged, reason = excluded.reason, changed_at = excluded.changed_at"
            " WHERE brake.engaged <> excluded.engaged", (name, int(engaged), reason, time.time())) > 0
