"""The outbox relay: ``beanmail outbox run|init|status|retry --db URL``. It owns moving rows of an
application's outbox table (producer/outbox.py, docs/outbox.md) to beanstalkd.

A row is put, then deleted: a relay killed in between puts it again, and the worker's key ledger
sends its key once. PostgreSQL rows are taken ``FOR UPDATE SKIP LOCKED``, so several relays share
a table without putting a row twice; the relay wakes on the trigger's NOTIFY and looks anyway
every ``RECHECK`` seconds (``--poll``). SQLite is polled (``--poll``, POLL); there the rows are read without a lock (the
application's writers never wait for a put), so two relays on one SQLite file may both put a row:
harmless, for the same reason.

The application's database or beanstalkd unreachable: the relay waits, logs it once per outage,
and keeps every row. A row that can never be put (a body over beanstalkd's max-job-size, a bad
tube or number) gets its reason in ``error``, is logged at error and left for an operator
(``beanmail outbox status``, ``beanmail outbox retry``); it blocks none behind it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import Any

from producer import outbox
from producer.client import JobTooBig, Notifier, Unreachable

from . import logs
from .loop import EX_UNAVAILABLE
from .settings import Settings

BATCH = 100
RECHECK = 1.0  # PostgreSQL: seconds between looks when no NOTIFY came (a relay started late, a lost one)
POLL = 0.1  # SQLite: seconds between looks
STOP_WITHIN = 0.5  # seconds a SIGTERM may wait for a waiting relay to notice it
TUBE_NAME = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}")
COLUMNS = "id, job_key, tube, pri, delay, ttr, body"


class DatabaseDown(Exception):
    """The application's database cannot be read or written now (down, locked, no table yet)."""


class BadUrl(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    tube: str
    pri: int
    delay: int
    ttr: int
    body: str

    def problem(self) -> str | None:
        """Why beanstalkd could never take this row, or None."""
        if not TUBE_NAME.fullmatch(self.tube or ""):
            return f"bad row: tube {self.tube!r} is not a beanstalkd tube name"
        if not 0 <= self.pri < 2**32:
            return f"bad row: pri {self.pri} is not a beanstalkd priority (0 to 4294967295)"
        if self.delay < 0 or self.ttr < 1:
            return f"bad row: delay {self.delay} and ttr {self.ttr} must be >= 0 and >= 1"
        if not self.key:
            return "bad row: no job_key"
        if not self.body:
            return "bad row: empty body"
        return None


def dialect_of(url: str) -> str:
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise BadUrl(f"--db must be sqlite:///ABSOLUTE/PATH or postgresql://..., got {url!r}")


def sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise BadUrl(f"an SQLite outbox needs an absolute path, sqlite:///srv/app/db.sqlite3; got {url!r}")
    return "/" + path.lstrip("/")


class Database:
    """One connection to the application's database, opened on demand, reopened after a failure;
    every driver error comes out as DatabaseDown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        self.path = sqlite_path(url) if self.dialect == "sqlite" else ""
        self._conn: Any = None
        self._listener: Any = None

    def connect(self) -> Any:
        if self._conn is None:
            try:
                if self.dialect == "sqlite":
                    # mode=rw: a wrong path is an error, never a new empty database
                    self._conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=5,
                                                 isolation_level=None, check_same_thread=False)
                else:
                    import psycopg

                    self._conn = psycopg.connect(self.url, connect_timeout=5)
            except Exception as exc:  # noqa: BLE001 - every driver's failure to connect is an outage
                raise DatabaseDown(_reason(exc)) from exc
        return self._conn

    def close(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
        self._conn = self._listener = None

    def create(self) -> None:
        conn = self.connect()
        try:
            if self.dialect == "sqlite":
                for statement in outbox.ddl("sqlite"):
                    conn.execute(statement)
            else:
                outbox.create_table(conn, "postgresql")
        except Exception as exc:
            self.close()
            raise DatabaseDown(_reason(exc)) from exc

    # -- taking rows ------------------------------------------------------------------------
    def relay(self, put: "Putter", limit: int = BATCH) -> tuple[int, int]:
        """Put up to ``limit`` rows and delete them; ``(moved, failed)``. Unreachable (beanstalkd)
        is raised after the rows already put are deleted."""
        try:
            if self.dialect == "postgresql":
                return self._relay_postgresql(put, limit)
            return self._relay_sqlite(put, limit)
        except (DatabaseDown, Unreachable):
            raise
        except Exception as exc:  # noqa: BLE001 - a driver error: the database is the problem
            self.close()
            raise DatabaseDown(_reason(exc)) from exc

    def _relay_postgresql(self, put: "Putter", limit: int) -> tuple[int, int]:
        conn = self.connect()
        with conn.transaction():
            rows = [Row(*r) for r in conn.execute(
                f"SELECT {COLUMNS} FROM {outbox.TABLE} WHERE error IS NULL ORDER BY id LIMIT %s"
                " FOR UPDATE SKIP LOCKED", (limit,))]
            done, failed, stopped = put.each(rows)
            if done:
                conn.execute(f"DELETE FROM {outbox.TABLE} WHERE id = ANY(%s)", (done,))
            for row_id, reason in failed:
                conn.execute(f"UPDATE {outbox.TABLE} SET error = %s WHERE id = %s", (reason, row_id))
        conn.commit()  # outside an explicit transaction psycopg has one open for the next statements
        if stopped is not None:
            raise stopped
        return len(done), len(failed)

    def _relay_sqlite(self, put: "Putter", limit: int) -> tuple[int, int]:
        conn = self.connect()
        rows = [Row(*r) for r in conn.execute(
            f"SELECT {COLUMNS} FROM {outbox.TABLE} WHERE error IS NULL ORDER BY id LIMIT ?", (limit,))]
        done, failed, stopped = put.each(rows)
        if done or failed:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if done:
                    conn.execute(f"DELETE FROM {outbox.TABLE} WHERE id IN ({','.join('?' * len(done))})", done)
                conn.executemany(f"UPDATE {outbox.TABLE} SET error = ? WHERE id = ?",
                                 [(reason, row_id) for row_id, reason in failed])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if stopped is not None:
            raise stopped
        return len(done), len(failed)

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, timeout: float) -> bool:
        """Until a row may be there: True on a NOTIFY (PostgreSQL), False after ``timeout``."""
        if self.dialect == "sqlite":
            time.sleep(timeout)
            return False
        try:
            if self._listener is None:
                import psycopg

                self._listener = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                self._listener.execute(f"LISTEN {outbox.CHANNEL}")
                return True  # rows inserted before LISTEN: look once more before waiting
            return any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1))
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise DatabaseDown(_reason(exc)) from exc

    # -- operators ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        conn = self.connect()
        try:
            pending, oldest = conn.execute(
                f"SELECT count(*), min(created_at) FROM {outbox.TABLE} WHERE error IS NULL").fetchone()
            failed = [dict(id=r[0], key=r[1], error=r[2]) for r in conn.execute(
                f"SELECT id, job_key, error FROM {outbox.TABLE} WHERE error IS NOT NULL ORDER BY id")]
            if self.dialect == "postgresql":
                conn.rollback()
        except Exception as exc:
            self.close()
            raise DatabaseDown(_reason(exc)) from exc
        return {"pending": int(pending), "oldest_age_s": round(time.time() - oldest, 3) if oldest else None,
                "failed": failed}

    def retry(self) -> int:
        """Clear every row's error: the relay tries them again."""
        conn = self.connect()
        try:
            count = conn.execute(f"UPDATE {outbox.TABLE} SET error = NULL WHERE error IS NOT NULL").rowcount
            if self.dialect == "postgresql":
                conn.commit()
        except Exception as exc:
            self.close()
            raise DatabaseDown(_reason(exc)) from exc
        return int(count)


class Putter:
    """Puts rows on beanstalkd through a Notifier (which spreads keys over a fleet)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.log = logs.get_logger()

    def each(self, rows: list[Row]) -> tuple[list[int], list[tuple[int, str]], Unreachable | None]:
        """``(put, failed for good with the reason, the outage that stopped it or None)``."""
        done: list[int] = []
        failed: list[tuple[int, str]] = []
        for row in rows:
            reason = row.problem()
            if reason is None:
                try:
                    self.notifier.put_body(row.tube, row.pri, row.delay, row.ttr, row.body.encode("utf-8"),
                                           key=row.key)
                except JobTooBig as exc:
                    reason = str(exc)
                except Unreachable as exc:
                    return done, failed, exc
                else:
                    done.append(row.id)
                    continue
            failed.append((row.id, reason))
            self.log.error("outbox row kept, it can never be put", row=row.id, key=row.key, reason=reason)
        return done, failed, None


class Relay:
    def __init__(self, db: Database, notifier: Notifier, *, poll: float | None = None) -> None:
        """``poll``: seconds between looks when nothing woke the relay (SQLite: POLL; PostgreSQL,
        woken by NOTIFY: RECHECK)."""
        self.db = db
        self.putter = Putter(notifier)
        self.poll = poll if poll is not None else POLL if db.dialect == "sqlite" else RECHECK
        self.stopping = False
        self.moved = 0
        self.log = logs.get_logger(db=_safe_url(db.url))
        self._outage: dict[str, float] = {}  # "database" / "beanstalkd" -> since when

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self, burst: bool = False) -> int:
        """Until SIGTERM; with ``burst``, until no row is left (0) or the database or beanstalkd
        does not answer (69)."""
        delay = 0.1
        while not self.stopping:
            try:
                moved, failed = self.db.relay(self.putter)
                self._recovered("database")
                self._recovered("beanstalkd")
            except DatabaseDown as exc:
                self._down("database", f"outbox database unreachable, rows wait there: {exc}")
                if burst:
                    return EX_UNAVAILABLE
                delay = self._pause(delay)
                continue
            except Unreachable as exc:
                self._recovered("database")
                self._down("beanstalkd", f"beanstalkd unreachable, outbox rows wait: {exc}")
                if burst:
                    return EX_UNAVAILABLE
                delay = self._pause(delay)
                continue
            delay = 0.1
            self.moved += moved
            if moved or failed:
                continue
            if burst:
                return 0
            try:
                self._wait()
            except DatabaseDown as exc:
                self._down("database", f"outbox database unreachable, rows wait there: {exc}")
                delay = self._pause(delay)
        return 0

    def _wait(self) -> None:
        """``poll`` seconds or until woken, in slices: SIGTERM is noticed within STOP_WITHIN."""
        end = time.monotonic() + self.poll
        while not self.stopping:
            left = end - time.monotonic()
            if left <= 0 or self.db.wait(min(left, STOP_WITHIN)):
                return

    def _pause(self, delay: float) -> float:
        end = time.monotonic() + delay
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))
        return min(delay * 2, 5.0)

    def _down(self, what: str, message: str) -> None:
        if what not in self._outage:
            self._outage[what] = time.monotonic()
            self.log.warning(message)

    def _recovered(self, what: str) -> None:
        since = self._outage.pop(what, None)
        if since is not None:
            self.log.info(f"outbox relay: {what} answers again", down_s=round(time.monotonic() - since, 1))


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


# -- the command --------------------------------------------------------------------------------

def register(sub: Any) -> None:
    o = sub.add_parser("outbox", help="move jobs an application wrote into its outbox table to beanstalkd")
    o.add_argument("action", choices=("run", "init", "status", "retry"),
                   help="run: relay rows (until SIGTERM); init: create the table; status: rows waiting and"
                        " rows kept with an error; retry: clear those errors")
    o.add_argument("--db", default=os.environ.get("BEANMAIL_OUTBOX_DB", ""),
                   help="the application's database: sqlite:///ABSOLUTE/PATH or postgresql://..."
                        " (default: $BEANMAIL_OUTBOX_DB)")
    o.add_argument("--burst", action="store_true", help="run: exit 0 once no row is left")
    o.add_argument("--poll", type=float, metavar="SECONDS",
                   help=f"seconds between looks: SQLite {POLL}; PostgreSQL, woken by NOTIFY, {RECHECK} (for a lost one)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(handler=cmd_outbox)


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from .ops import OpsError

    logs.configure(settings.log_format)
    if not args.db:
        if args.action == "run" and not args.burst:
            return _idle()
        raise OpsError("no database: --db URL or BEANMAIL_OUTBOX_DB")
    try:
        db = Database(args.db)
    except BadUrl as exc:
        raise OpsError(str(exc)) from None
    try:
        if args.action == "init":
            db.create()
            print(f"outbox table {outbox.TABLE} ready in {_safe_url(args.db)}")
            return 0
        if args.action == "status":
            status = db.status()
            if args.json:
                print(json.dumps(status))
            else:
                age = "" if status["oldest_age_s"] is None else f", the oldest {status['oldest_age_s']} s old"
                print(f"{status['pending']} row(s) waiting{age}; {len(status['failed'])} kept with an error")
                for row in status["failed"]:
                    print(f"  row {row['id']} key={row['key']}: {row['error']}")
            return 0
        if args.action == "retry":
            print(f"{db.retry()} row(s) will be tried again")
            return 0
    except DatabaseDown as exc:
        print(f"beanmail outbox: database unreachable: {exc}", file=sys.stderr, flush=True)
        return EX_UNAVAILABLE
    finally:
        if args.action != "run":
            db.close()
    notifier = Notifier(settings.beanstalk_url, secret="", spool="", blobs="")  # the rows are signed bodies
    relay = Relay(db, notifier, poll=args.poll)
    relay.install_signal_handlers()
    relay.log.info("outbox relay started", burst=args.burst)
    try:
        code = relay.run(burst=args.burst)
    finally:
        db.close()
        notifier.close()
    relay.log.info("outbox relay stopped", moved=relay.moved, code=code)
    return code


def _idle() -> int:
    """`outbox run` with no database configured (supervisord.conf starts it in every clone): say
    so once and wait for SIGTERM, so supervisord shows it RUNNING and a fresh clone stays quiet."""
    stop = False

    def on_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    logs.get_logger().warning("outbox relay idle: no database configured (BEANMAIL_OUTBOX_DB or --db)")
    while not stop:
        time.sleep(0.5)
    return 0

