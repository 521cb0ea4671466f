"""Scheduled mailouts: chunks held in the delivery store until they are due, then released to the
``mailout`` tube (by ``worker/scheduled.py``, inside ``beanmail fanout``); cancelled and listed by
key (``beanmail mailout cancel|list``).

Held in the store, not as beanstalkd delayed jobs, because a delayed job can be neither found by
key (beanstalkd lists no delayed job but the next) nor cancelled without its id, is lost with
the server's memory when it runs without a binlog, and a schedule of weeks would rest on one
server's uptime. The store already holds what must outlive a restart (claims, digests); here a
scheduled chunk is a row, a release is "put, then delete the row" (a crash between the two puts
it again, and the recipients' deterministic keys let nobody get it twice).

``send_at_local="08:00"`` is each recipient's own clock: their time zone from the digest
preferences (``digest_prefs``, docs/digests.md) or ``BEANMAIL_DIGEST_TIMEZONE`` (UTC), read when
the mailout is scheduled; recipients due at the same instant share chunks.

Standard library only (psycopg for a PostgreSQL store), over ``producer.blobs``' connection
handling, so a web application schedules with what it already has.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from .blobs import BlobError, BlobStore
from .prefs import TABLE as PREFS_TABLE
from .prefs import zone

TABLES = (
    "CREATE TABLE IF NOT EXISTS mailouts (key TEXT PRIMARY KEY, template TEXT NOT NULL,"
    " priority TEXT NOT NULL, state TEXT NOT NULL, recipients INTEGER NOT NULL DEFAULT 0,"
    " chunks INTEGER NOT NULL DEFAULT 0, send_at DOUBLE PRECISION NOT NULL DEFAULT 0,"
    " last_at DOUBLE PRECISION NOT NULL DEFAULT 0, local TEXT NOT NULL DEFAULT '',"
    " created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mailout_chunks (key TEXT NOT NULL, n INTEGER NOT NULL,"
    " due_at DOUBLE PRECISION NOT NULL, recipients INTEGER NOT NULL, body {blob} NOT NULL, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,"
    " PRIMARY KEY (key, n))",
    "CREATE INDEX IF NOT EXISTS mailout_chunks_due ON mailout_chunks (due_at)",
)
# writing: chunks being stored (a producer that died part-way leaves it so: cancel removes it)
# scheduled: waiting for its due time(s); released: every chunk is on the mailout tube
# queued: an immediate mailout recorded for its progress only; cancelled
STATES = ("writing", "scheduled", "released", "queued", "cancelled")
LEASE = 60.0  # a releaser that took a chunk and died: another puts it again after this long
_CLOCK = re.compile(r"(?:(\d{4}-\d{2}-\d{2})[ T])?([01]?\d|2[0-3]):([0-5]\d)")


class ScheduleError(ValueError):
    """A schedule that cannot be: in the past, a bad local time, a key already used, a cancel
    of what has already gone."""


def clock() -> float:
    """Now, as the scheduler sees it (the unit tests fix it)."""
    return time.time()


def default_timezone() -> str:
    return os.environ.get("BEANMAIL_DIGEST_TIMEZONE") or "UTC"


MAX_AHEAD = 366 * 86400  # a mailout scheduled further ahead than a year is a mistake (or inf, nan)


def instant(send_at: datetime | float | int) -> float:
    """A UNIX time from ``send_at``: a time-zone-aware datetime, or seconds since the epoch. A
    naive datetime is refused: whose 08:00 it means is exactly what must not be guessed."""
    if isinstance(send_at, datetime):
        if send_at.tzinfo is None or send_at.utcoffset() is None:
            raise ScheduleError(f"send_at {send_at.isoformat()} has no time zone: give an aware datetime"
                                " (datetime(..., tzinfo=ZoneInfo('Europe/Berlin'))) or use send_at_local")
        at = send_at.timestamp()
    elif isinstance(send_at, (int, float)) and not isinstance(send_at, bool):
        at = float(send_at)
    else:
        raise ScheduleError(f"send_at must be a datetime or a UNIX time, not {type(send_at).__name__}")
    if not math.isfinite(at) or at > time.time() + MAX_AHEAD:
        raise ScheduleError(f"send_at {send_at!r} is not a time within {MAX_AHEAD // 86400:.0f} days from now")
    return at


def parse_local(wall: str | datetime) -> tuple[date | None, int, int]:
    """``"08:00"`` (the next 08:00), ``"2026-12-07 08:00"`` or a naive datetime (that wall-clock
    time on that day) -> (day or None, hour, minute)."""
    if isinstance(wall, datetime):
        if wall.tzinfo is not None:
            raise ScheduleError("send_at_local is a wall-clock time in each recipient's zone: give it without"
                                " tzinfo (or use send_at for one instant)")
        return wall.date(), wall.hour, wall.minute
    m = _CLOCK.fullmatch(str(wall).strip())
    if not m:
        raise ScheduleError(f"send_at_local must look like 08:00 or 2026-12-07 08:00, got {wall!r}")
    try:
        day = date.fromisoformat(m[1]) if m[1] else None
    except ValueError as exc:
        raise ScheduleError(f"send_at_local {wall!r}: {exc}") from None
    return day, int(m[2]), int(m[3])


def local_due(wall: str | datetime, tz_name: str, now: float) -> float:
    """When ``wall`` happens in zone ``tz_name``: a clock time alone is its next occurrence after
    ``now`` (today's if still ahead, else tomorrow's); with a day, that day's. A time that a
    daylight-saving change skips is taken as the clock reads it after the change (02:30 on the
    spring-forward night in Berlin is 03:30 CEST); a repeated one is its first occurrence."""
    day, hour, minute = parse_local(wall)
    tz = zone(tz_name)
    if day is None:
        today = datetime.fromtimestamp(now, tz).date()
        for candidate in (today, today + timedelta(days=1)):
            due = _wall(candidate, hour, minute, tz)
            if due > now:
                return due
        return _wall(today + timedelta(days=2), hour, minute, tz)  # a day that skips the time entirely
    return _wall(day, hour, minute, tz)


def _wall(day: date, hour: int, minute: int, tz: Any) -> float:
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)  # fold=0: the first of a repeat
    return local.astimezone(timezone.utc).timestamp()


@dataclass(frozen=True)
class Mailout:
    key: str
    template: str
    priority: str
    state: str
    recipients: int
    chunks: int  # chunks still held (not yet released)
    send_at: float  # the first recipient's due time (0: queued at once)
    last_at: float  # the last recipient's
    local: str  # the wall-clock time asked for, "" for one instant
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    key: str
    state: str  # the record's (scheduled, released, queued, cancelled, ...); "" when none was kept
    total: int | None  # recipients, when the mailout was recorded; None otherwise
    sent: int
    bounced: int
    skipped: int  # suppressed, unsubscribed, not visible, duplicates, collected into a digest
    failed: int  # exhausted or poison: buried, for an operator to look at
    pending: int  # being sent or waiting out a retry
    left: int  # not at an end yet: the total less sent, bounced, skipped, failed (pending without a total)
    held: int  # recipients of a scheduled mailout still in the store, not yet due

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = "key, template, priority, state, recipients, chunks, send_at, last_at, local, created_at, updated_at"


class Schedule:
    """The two tables, over a BlobStore's single connection under its lock. Thread-safe."""

    def __init__(self, location: str, timeout: float = 30.0) -> None:
        self._db = BlobStore(location, timeout)
        for statement in (*TABLES, PREFS_TABLE):
            try:
                self._run(statement.format(blob="BYTEA" if self._db.postgres else "BLOB"))
            except BlobError as exc:  # PostgreSQL: another process created it at the same instant
                if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                    raise

    def _run(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._db._lock:
            return int(self._db._execute(sql, args).rowcount)

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._db._lock:
            return list(self._db._execute(sql, args).fetchall())

    # -- the producer's side ----------------------------------------------------------------------
    def begin(self, key: str, template: str, priority: str, local: str = "", state: str = "writing") -> None:
        now = time.time()
        try:
            self._run(f"INSERT INTO mailouts ({_COLUMNS}) VALUES (?, ?, ?, ?, 0, 0, 0, 0, ?, ?, ?)",
                      (key, template, priority, state, local, now, now))
        except BlobError as exc:
            if "UNIQUE" in str(exc) or "duplicate key" in str(exc):
                raise ScheduleError(f"mailout {key!r} was already scheduled or recorded: a mailout key is used"
                                    " once, even a cancelled one: give a new key") from None
            raise

    def add_chunk(self, key: str, n: int, due_at: float, recipients: int, body: bytes) -> None:
        self._run("INSERT INTO mailout_chunks (key, n, due_at, recipients, body, lease_until) VALUES (?, ?, ?, ?, ?, 0)",
                  (key, n, due_at, recipients, body))

    def finish(self, key: str, recipients: int, chunks: int, first: float, last: float, state: str = "scheduled") -> None:
        self._run("UPDATE mailouts SET state = ?, recipients = ?, chunks = ?, send_at = ?, last_at = ?, updated_at = ?"
                  " WHERE key = ?", (state, recipients, chunks, first, last, time.time(), key))

    def abandon(self, key: str) -> None:
        """A mailout whose writing failed part-way: gone, so its key can be used again."""
        self._run("DELETE FROM mailout_chunks WHERE key = ?", (key,))
        self._run("DELETE FROM mailouts WHERE key = ? AND state = 'writing'", (key,))

    def record(self, key: str, template: str, priority: str) -> None:
        """An immediate mailout, recorded for its progress (the Django admin action does): call
        ``queued`` once it is queued, or ``abandon`` if it could not be."""
        self.begin(key, template, priority)

    def queued(self, key: str, recipients: int) -> None:
        self.finish(key, recipients, 0, 0.0, 0.0, state="queued")

    def zones(self, addresses: Iterable[str], default: str) -> dict[str, str]:
        """Each address's time zone (lower-cased address -> IANA name) from the preferences."""
        wanted = sorted({a.lower() for a in addresses})
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            found.update(self._rows("SELECT address, timezone FROM digest_prefs WHERE timezone <> '' AND address IN"
                                    f" ({', '.join('?' * len(part))})", part))
        return {a: found.get(a) or default for a in wanted}

    # -- the releaser's side ----------------------------------------------------------------------
    def due(self, now: float, limit: int = 50) -> list[tuple[str, int, str, bytes]]:
        """Chunks due at ``now`` of scheduled mailouts, not held by another releaser, each leased
        for LEASE seconds: (key, n, priority, body)."""
        rows = self._rows("SELECT c.key, c.n, m.priority, c.body FROM mailout_chunks c JOIN mailouts m ON m.key = c.key"
                          " WHERE m.state = 'scheduled' AND c.due_at <= ? AND c.lease_until <= ?"
                          " ORDER BY c.due_at, c.key, c.n LIMIT ?", (now, now, limit))
        taken = []
        for key, n, priority, body in rows:
            if self._run("UPDATE mailout_chunks SET lease_until = ? WHERE key = ? AND n = ? AND lease_until <= ?"
                         " AND EXISTS (SELECT 1 FROM mailouts WHERE key = ? AND state = 'scheduled')",
                         (now + LEASE, key, n, now, key)) == 1:
                taken.append((key, n, priority, bytes(body)))
        return taken

    def released(self, key: str, n: int) -> None:
        """The chunk is on the mailout tube: its row goes; the mailout is released with its last."""
        now = time.time()
        self._run("DELETE FROM mailout_chunks WHERE key = ? AND n = ?", (key, n))
        self._run("UPDATE mailouts SET state = CASE WHEN EXISTS (SELECT 1 FROM mailout_chunks c WHERE c.key = ?)"
                  " THEN state ELSE 'released' END, chunks = (SELECT count(*) FROM mailout_chunks c WHERE c.key = ?),"
                  " updated_at = ? WHERE key = ? AND state = 'scheduled'", (key, key, now, key))

    # -- progress (the Django admin, beanmail mailout progress, the console) -----------------------
    def progress(self, key: str) -> "Progress":
        """One mailout's figures from the delivery log (each recipient's key is ``<key>:<address>``,
        worker/fanout.py) and its record here (the total). A range scan of the log's primary key on
        SQLite; on PostgreSQL a scan matching ``left(key, n)``, right whatever the collation."""
        prefix = f"{key}:"
        if self._db.postgres:
            rows = self._rows("SELECT outcome, count(*) FROM deliveries WHERE left(key, ?) = ? GROUP BY outcome",
                              (len(prefix), prefix))
        else:
            rows = self._rows("SELECT outcome, count(*) FROM deliveries WHERE key >= ? AND key < ? GROUP BY outcome",
                              (prefix, f"{key};"))
        counts = {outcome: int(n) for outcome, n in rows}
        found = self.get(key)
        held = int(self._rows("SELECT coalesce(sum(recipients), 0) FROM mailout_chunks WHERE key = ?", (key,))[0][0])
        sent, bounced, skipped = counts.get("sent", 0), counts.get("bounced", 0), counts.get("skipped", 0)
        failed = sum(counts.get(o, 0) for o in ("exhausted", "poison"))
        pending = sum(counts.get(o, 0) for o in ("claimed", "deferred", "in_doubt"))
        total = found.recipients if found is not None else None
        if total is not None and found is not None and found.state != "cancelled":
            left = max(0, total - sent - bounced - skipped - failed)
        else:  # unknown total, or cancelled: only what is on its way is left
            left = pending
        return Progress(key, found.state if found else "", total, sent, bounced, skipped, failed, pending, left, held)

    # -- operators (beanmail mailout cancel|list, the console) ------------------------------------
    def cancel(self, key: str, now: float | None = None) -> tuple[Mailout, int]:
        """Cancel what is still held; returns the mailout and how many of its recipients will not
        get it. A chunk a releaser holds this instant goes (its lease is honoured). ScheduleError
        for an unknown key or one already released, queued or cancelled."""
        now = clock() if now is None else now
        found = self.get(key)
        if found is None:
            raise ScheduleError(f"no mailout {key!r} is scheduled")
        if found.state not in ("writing", "scheduled"):
            raise ScheduleError(f"mailout {key!r} is {found.state}: nothing left to cancel")
        self._run("UPDATE mailouts SET state = 'cancelled', updated_at = ? WHERE key = ? AND state IN"
                  " ('writing', 'scheduled')", (time.time(), key))
        unsent = int(self._rows("SELECT coalesce(sum(recipients), 0) FROM mailout_chunks WHERE key = ?"
                                " AND lease_until <= ?", (key, now))[0][0])
        self._run("DELETE FROM mailout_chunks WHERE key = ? AND lease_until <= ?", (key, now))
        self._run("UPDATE mailouts SET chunks = (SELECT count(*) FROM mailout_chunks c WHERE c.key = ?)"
                  " WHERE key = ?", (key, key))
        return self.get(key) or found, unsent

    def get(self, key: str) -> Mailout | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM mailouts WHERE key = ?", (key,))
        return _mailout(rows[0]) if rows else None

    def list(self, states: Sequence[str] = ("writing", "scheduled"), limit: int = 200) -> list[Mailout]:
        """Mailouts in ``states``, the soonest first."""
        marks = ", ".join("?" * len(states))
        return [_mailout(r) for r in self._rows(f"SELECT {_COLUMNS} FROM mailouts WHERE state IN ({marks})"
                                                " ORDER BY send_at, key LIMIT ?", (*states, limit))]

    def close(self) -> None:
        self._db.close()


def _mailout(row: Sequence[Any]) -> Mailout:
    key, template, priority, state, recipients, chunks, send_at, last_at, local, created, updated = row
    return Mailout(key, template, priority, state, int(recipients), int(chunks), float(send_at), float(last_at),
                   local, float(created), float(updated))

