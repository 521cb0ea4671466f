"""Replies to the tracker's mail become comments: beanmail POSTs a signed ``message.replied``
event (docs/events.md) to ``/beanmail/events``; the tracker checks its signature
(``producer.events.verify``), drops an event id it handled before (delivery is at least once)
and, when the reply comes from the watcher the mail went to (``sender_verified``), adds its new
text as that watcher's comment, which mails the other watchers (the replier excluded) as any
comment does. A reply from anyone else (a forward), or to a private issue from someone who no
longer watches it, is not acted on."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

from producer.events import EventVerificationError, verify

log = logging.getLogger("tracker.replies")
SCHEMA = "CREATE TABLE IF NOT EXISTS events_seen (id TEXT PRIMARY KEY)"


class ReplyHook:
    def __init__(self, secret: str, db: Callable[[], sqlite3.Connection],
                 comment: Callable[[int, str, str], int]) -> None:
        self.secret, self.db, self.comment = secret, db, comment
        self.db().execute(SCHEMA)

    def receive(self, body: bytes, headers: dict[str, Any]) -> tuple[str, str]:
        """(HTTP status, text) for one POSTed event."""
        try:
            event = verify(body, headers, self.secret)
        except EventVerificationError as exc:
            return "401 Unauthorized", str(exc)
        db = self.db()
        if db.execute("SELECT 1 FROM events_seen WHERE id = ?", (event.id,)).fetchone():
            return "204 No Content", ""
        if event.type == "message.replied":
            self._reply(event.data)
        db.execute("INSERT OR IGNORE INTO events_seen VALUES (?)", (event.id,))
        db.commit()
        return "204 No Content", ""

    def _reply(self, data: dict[str, Any]) -> None:
        # our mail's key is comment:<id>:<watcher> (a mailout's key and its recipient): the issue is the comment's
        db = self.db()
        parts = str(data.get("key", "")).split(":")
        row = None
        if len(parts) >= 2 and parts[0] == "comment" and parts[1].isdigit():
            row = db.execute("SELECT c.issue_id, i.private FROM comments c JOIN issues i ON i.id = c.issue_id"
                             " WHERE c.id = ?", (int(parts[1]),)).fetchone()
        text, replier = str(data.get("text", "")).strip(), str(data.get("recipient", "")).lower()
        if row is None or not text:
            log.warning("reply to no comment of ours, or empty: dropped (key %r)", data.get("key"))
            return
        issue_id, private = row
        if not data.get("sender_verified"):
            log.warning("reply to issue %s from %r, not the watcher the mail went to: not posted", issue_id, data.get("from"))
            return
        if private and not db.execute("SELECT 1 FROM watchers WHERE issue_id = ? AND lower(email) = ?",
                                      (issue_id, replier)).fetchone():
            log.warning("reply to private issue %s from %r, who no longer watches it: not posted", issue_id, replier)
            return
        self.comment(int(issue_id), replier, text)
