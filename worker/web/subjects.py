"""Each built message's Subject, by key, for the console's delivery log: the worker takes the
header from the message it built (a few microseconds: a search in its header block, no MIME
parse) and its console tally (``tally``) writes the batch in one statement every few seconds,
so the delivery log is labelled by subject with no store write per message.

The table ``console_subjects`` is this module's (created when first written, on SQLite and
PostgreSQL alike); its rows go after KEEP seconds. The header is stored as it was sent
(RFC 2047 encoded words and all) and decoded when a page shows it.
"""

from __future__ import annotations

import re
import time
from email import policy
from typing import Any, Iterable, Sequence

from ..logs import get_logger
from ..store import storable_text, unstorable

KEEP = 90 * 86400  # as the events' references: long after anyone looks a message up
MAX_SUBJECT = 998  # a header line's length limit (RFC 5322); longer is cut
ROWS_PER_STATEMENT = 300  # 900 parameters: under every SQLite's limit
_TABLE = ("CREATE TABLE IF NOT EXISTS console_subjects (key TEXT PRIMARY KEY, subject TEXT NOT NULL,"
          " created_at DOUBLE PRECISION NOT NULL)")
_SUBJECT = re.compile(rb"(?im)^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)")
_ready: set[str] = set()  # store locations where the table is known to exist


def header_subject(message: bytes) -> str:
    """The raw value of the message's Subject header, unfolded ('' when it has none)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    found = _SUBJECT.search(message, 0, end if end >= 0 else min(len(message), 65536))
    if not found:
        return ""
    value = re.sub(rb"\r?\n[ \t]", b" ", found.group(1)).strip()
    return value[:MAX_SUBJECT].decode("utf-8", "replace").replace("\x00", "\ufffd")


def shown(raw: str) -> str:
    """A stored Subject as a person reads it (encoded words decoded)."""
    try:
        return str(policy.default.header_factory("subject", raw))
    except Exception:  # noqa: BLE001 - a malformed encoded word: shown as it came
        return raw


def _ensure(store: Any) -> None:
    if store.location in _ready:
        return
    try:
        store.execute(_TABLE)
    except Exception as exc:  # noqa: BLE001 - two processes creating it at once (PostgreSQL): it is there now
        if not _exists(store):
            raise exc
    _ready.add(store.location)


def _exists(store: Any) -> bool:
    try:
        store.one("SELECT count(*) FROM console_subjects WHERE key = ''")
        return True
    except Exception:  # noqa: BLE001
        return False


def write(store: Any, rows: dict[str, str], now: float | None = None, prune: bool = False) -> None:
    """Record ``rows`` (key -> raw Subject); a key seen again keeps its newest subject. Raises
    what the store raises (the tally keeps the rows for its next write)."""
    if not rows and not prune:
        return
    _ensure(store)
    now = time.time() if now is None else now
    # one row the store cannot hold would fail its whole statement: such keys are left out (the
    # pipeline refuses them before sending anyway), such subjects made storable
    items = [(key, storable_text(subject[:MAX_SUBJECT])) for key, subject in rows.items()
             if unstorable("key", key) is None]
    for i in range(0, len(items), ROWS_PER_STATEMENT):
        part = items[i:i + ROWS_PER_STATEMENT]
        marks = ", ".join("(?, ?, ?)" for _ in part)
        store.execute(f"INSERT INTO console_subjects (key, subject, created_at) VALUES {marks} ON CONFLICT (key)"
                      " DO UPDATE SET subject = excluded.subject, created_at = excluded.created_at",
                      [v for key, subject in part for v in (key, subject, now)])
    if prune:
        store.execute("DELETE FROM console_subjects WHERE created_at < ?", (now - KEEP,))


def subjects_for(store: Any, keys: Iterable[str]) -> dict[str, str]:
    """key -> Subject as a person reads it, for the keys that have one recorded."""
    keys = [k for k in keys if k]
    if not keys:
        return {}
    try:
        rows: Sequence[Any] = store.all_in("SELECT key, subject FROM console_subjects WHERE key IN ({marks})", keys)
    except Exception as exc:  # noqa: BLE001 - no worker has written one yet: the table is not there
        if _exists(store):
            get_logger().warning("subjects not read", error=repr(exc))
        return {}
    return {k: shown(s) for k, s in rows}
