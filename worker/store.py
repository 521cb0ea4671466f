"""The delivery store: the delivery log and claims (nothing sent twice), the suppression list,
per-domain send slots, and the reasons jobs were buried (beanstalkd keeps none).

``BEANMAIL_STORE`` is an SQLite file (WAL, so a pool of processes on one host shares it) or a
``postgresql://`` DSN for a fleet of worker hosts. The SQL is written once, in the dialect both
understand; a backend only says how to connect, open a transaction and spell a placeholder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

from producer.blobs import switch_to_wal

from .identity import process_id, process_of
from .journal import Journal
from .logs import get_logger
from .outcomes import Deferred, Outage, Outcome, Poison, Skipped

# Types are spelled so that both engines read them right: DOUBLE PRECISION is a float8 in
# PostgreSQL (its REAL would lose the sub-second part of a timestamp) and REAL-affine in SQLite.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- claimed | sent | skipped | bounced | deferred | in_doubt | exhausted | poison
        reason TEXT NOT NULL DEFAULT '',
        reply TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        claim_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX deliveries_recipient ON deliveries (recipient);
    CREATE TABLE suppression (
        address TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,           -- bounce | unsubscribe | operator
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE failures (
        server TEXT NOT NULL,
        job_id BIGINT NOT NULL,
        tube TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- poison | exhausted
        reason TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX failures_job ON failures (server, job_id, created_at);
    """,
    2: """
    CREATE TABLE rate_slots (
        domain TEXT PRIMARY KEY,
        next_at DOUBLE PRECISION NOT NULL -- the earliest time the next message may go
    );
    CREATE TABLE rate_bookings (
        key TEXT PRIMARY KEY,           -- a job released to come back at its booked slot
        slot_at DOUBLE PRECISION NOT NULL
    );
    """,
    3: """
    ALTER TABLE deliveries ADD COLUMN free_releases INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,            -- sha256:<hex> of the data (producer.blobs writes them)
        data {blob} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
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
    ALTER TABLE suppression ADD COLUMN expires_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    CREATE TABLE webhook_events (
        provider TEXT NOT NULL,         -- ses | sendgrid | postmark | mailgun
        event_id TEXT NOT NULL,         -- the provider's own id of the event (SNS: its MessageId)
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (provider, event_id)
    );
    CREATE INDEX webhook_events_received ON webhook_events (received_at)
    """,
    20: """
    CREATE TABLE console_counts (
        minute BIGINT NOT NULL,         -- unix time // 60
        tube TEXT NOT NULL,
        outcome TEXT NOT NULL,
        messages BIGINT NOT NULL,
        latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0, -- seconds from enqueue to accepted, sent mail
        """ + "".join(f"l{i} BIGINT NOT NULL DEFAULT 0, " for i in range(16)) + """
        PRIMARY KEY (minute, tube, outcome)
    )
    """,
    21: """
    ALTER TABLE console_counts ADD COLUMN latency_max DOUBLE PRECISION NOT NULL DEFAULT 0;
    CREATE TABLE console_domains (
        minute BIGINT NOT NULL,
        domain TEXT NOT NULL,           -- a recipient domain, or '(other)' past the busiest of a write
        outcome TEXT NOT NULL,
        messages BIGINT NOT NULL,
        PRIMARY KEY (minute, domain, outcome)
    )
    """,
    30: """
    CREATE TABLE IF NOT EXISTS digest_prefs (
        address TEXT PRIMARY KEY,       -- lowercased (producer/prefs.py creates it the same way)
        mode TEXT NOT NULL DEFAULT '',  -- '' (the job decides) | immediate | hourly | daily | weekly | off
        timezone TEXT NOT NULL DEFAULT '',
        quiet_start INTEGER NOT NULL DEFAULT -1, -- minutes after local midnight, -1: none
        quiet_end INTEGER NOT NULL DEFAULT -1,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE digest_items (
        key TEXT PRIMARY KEY,           -- the notification's idempotency key: collected once
        recipient TEXT NOT NULL,
        grp TEXT NOT NULL,              -- the template, or * (one digest across templates)
        due_at DOUBLE PRECISION NOT NULL, -- the end of the period it was collected in
        created_at DOUBLE PRECISION NOT NULL,
        item TEXT NOT NULL,             -- JSON (worker/digest/collect.py)
        batch TEXT NOT NULL DEFAULT '', -- the digest's key once closed, '' while waiting
        batched_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX digest_items_due ON digest_items (batch, due_at);
    CREATE INDEX digest_items_group ON digest_items (recipient, grp, batch);
    CREATE TABLE digest_flags (
        name TEXT PRIMARY KEY,          -- quiet_lifted: mail made before it is no longer held
        at DOUBLE PRECISION NOT NULL
    )
    """,
    31: """
    DROP INDEX digest_items_group;
    CREATE INDEX digest_items_group ON digest_items (recipient, grp, batch, due_at)
    """,
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
    41: """
    CREATE TABLE mx_slots (
        domain TEXT NOT NULL,           -- a recipient domain delivered to directly
        holder TEXT NOT NULL,           -- host:pid:session: one open connection of the fleet
        expires DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, holder)
    )
    """,
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
# Upper bounds (seconds) of the enqueue-to-accepted latency buckets, columns l0.. of
# console_counts (counts per bucket, not cumulative); the last column counts what is above.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
# Numbers by owner: 1-9 the core, 10-19 feedback (bounces, DKIM), 20-29 the console and
# metrics, 30-39 digests, 40-49 the worker registry, 60-69 delivery events. Gaps are fine; each runs once.
FINAL = ("sent", "skipped", "bounced")


@dataclass(frozen=True)
class Delivery:
    key: str
    recipient: str
    template: str
    outcome: str
    reason: str
    reply: str
    attempts: int
    updated_at: float


@dataclass(frozen=True)
class Finish:
    """How one job ended, for ``Store.finish_many``."""
    key: str
    recipient: str
    template: str
    outcome: str
    reason: str = ""
    reply: str = ""
    overwrite_final: bool = True  # False: the job never held the claim; leave an ended or claimed row
    hold: float = 0.0
    free: bool = False


_CLAIM = (
    "INSERT INTO deliveries (key, recipient, template, outcome, attempts, claimed_by,"
    " claim_expires, updated_at) VALUES (?, ?, ?, 'claimed', 1, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET outcome = 'claimed', attempts = deliveries.attempts + 1,"
    " claimed_by = excluded.claimed_by, claim_expires = excluded.claim_expires,"
    " updated_at = excluded.updated_at"
    " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced')"
    " AND (deliveries.outcome NOT IN ('claimed', 'in_doubt')"
    "      OR (deliveries.outcome = 'in_doubt' AND deliveries.claim_expires <= excluded.updated_at)"
    "      OR deliveries.claimed_by = excluded.claimed_by)"  # another's claim, even expired: _claim_contested
    " RETURNING attempts"
)
_FINISH = (
    "INSERT INTO deliveries (key, recipient, template, outcome, reason, reply, claim_expires,"
    " free_releases, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
    " outcome = excluded.outcome, reason = excluded.reason, reply = excluded.reply, claimed_by = '',"
    " claim_expires = excluded.claim_expires,"
    " free_releases = deliveries.free_releases + excluded.free_releases,"
    " updated_at = excluded.updated_at"
)
_JOURNALED = "recorded from the journal of a worker that died or stalled before its store write"
_JOURNALED_SENT = ("UPDATE deliveries SET outcome = 'sent', reason = ?, claimed_by = '', updated_at = ?"
                   " WHERE key = ? AND outcome = 'claimed' AND claimed_by = ?")
_FINISH_UNCLAIMED = _FINISH + " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced', 'claimed')"
# a process found dead by its journal's lock: the registry need not wait for its heartbeat to stop
_DEAD = "UPDATE workers SET state = 'lost' WHERE id = ? AND state = 'running'"
_JOURNALED_DOUBT = ("in doubt: the worker holding it died or stalled after writing the end of data, before the reply"
                    " (its journal); retried after the in-doubt delay")
_JOURNALED_IN_DOUBT = ("UPDATE deliveries SET outcome = 'in_doubt', reason = ?, claimed_by = '', claim_expires = ?,"
                       " updated_at = ? WHERE key = ? AND outcome = 'claimed' AND claimed_by = ?")


def chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """``values`` in slices small enough for any database's limit on query parameters."""
    for i in range(0, len(values), size):
        yield values[i:i + size]


KEY_LIMIT = 200  # the longest idempotency key a job may carry (producer/envelope.py refuses longer)


def unstorable(what: str, value: str) -> str | None:
    """Why ``value`` (a key, an address, a template name: text the store keys rows by) cannot go
    into either store as it is, or None. PostgreSQL's text holds no NUL; neither database takes
    a lone surrogate (JSON's ``"\\ud800"`` decodes to one); a key has a length limit."""
    if not isinstance(value, str):
        return f"{what} is a {type(value).__name__}, not text"
    if "\0" in value:
        return f"{what} holds a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} holds a lone surrogate (not UTF-8)"
    if what in ("key", "template") and len(value) > KEY_LIMIT:  # a row's name, never a payload
        return f"{what} is longer than {KEY_LIMIT} characters"
    return None


def storable_text(value: str) -> str:
    """Free text (a reason, a reply, a buried body) as both stores hold it: NUL and lone
    surrogates replaced, so a record never fails for what a job or a server said."""
    value = value.replace("\0", "\ufffd")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def _safe_location(location: str) -> str:
    """A DSN without its password, for logs."""
    parts = urlsplit(location)
    if parts.password:
        return location.replace(f":{parts.password}@", ":***@", 1)
    return location


_connections = itertools.count(1)


def worker_id() -> str:
    """``host:pid:instance:n``: each store connection claims for itself, so two loops of one
    process (BEANMAIL_THREADS) never take each other's claim for their own; the instance
    (worker/identity.py) tells this run of the process from any other with the same pid."""
    return f"{process_id()}:{next(_connections)}"


class StoreUnavailable(Outage):
    """The store cannot be reached or is locked past its timeout: retry the job later."""


class StoreCorrupt(Exception):
    """The store's file is not a beanmail store (damaged, or another program's file): a person
    must look; commands exit 78 with this one line."""


def _sqlite_unavailable(exc: sqlite3.Error) -> bool:
    """Errors of the store, not of our SQL: locked, disk full, I/O error, read-only, damaged."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class _Sqlite:
    placeholder = "?"
    for_update = ""
    blob_type = "BLOB"

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._identity: tuple[int, int] | None = None
        self._checked = 0.0
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"store unavailable: {self.path}: {exc}") from exc
        try:
            switch_to_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            db.close()
            if _sqlite_unavailable(exc) and "not a database" not in str(exc) and "malformed" not in str(exc):
                raise StoreUnavailable(f"store unavailable: {self.path}: {exc}") from exc
            raise StoreCorrupt(f"{self.path} is not a usable beanmail store: {exc}") from exc
        if self.path != ":memory:":
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
        return db


    def check(self) -> bool:
        """Notice a store file deleted or replaced under the running worker (SQLite would go on
        writing to the deleted inode, and every record after it would be lost). A deleted file
        is restored from our still-open handle; a replaced one is reopened. True when the
        connection changed (the schema must be checked again)."""
        if self._identity is None:
            return False
        now = time.monotonic()
        if now - self._checked < 0.2:  # a stat per statement would cost more than the statement
            return False                # (what is written meanwhile is in the handle a restore copies)
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._restore()
            return True
        except OSError as exc:
            raise StoreUnavailable(f"store unavailable: {self.path}: {exc}") from exc
        if (st.st_dev, st.st_ino) == self._identity:
            return False
        get_logger().warning("store file replaced; reopened", store=self.path)
        self._reopen()
        return True

    def _restore(self) -> None:
        """Copy the deleted store (its inode lives on while we hold it open) back to its path.
        Several workers may race: the file is linked into place only if none is there yet."""
        tmp = f"{self.path}.restore-{os.getpid()}-{threading.get_ident()}"
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            target = sqlite3.connect(tmp)
            try:
                self.db.backup(target)
            finally:
                target.close()
            try:
                os.link(tmp, self.path)
                get_logger().error("store file was deleted under the worker; restored from the open store",
                                   store=self.path)
            except FileExistsError:
                pass  # another worker restored it first: use theirs
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"store file {self.path} was deleted and cannot be restored: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._reopen()

    def _reopen(self) -> None:
        old = self.db
        self.db = self._open()
        with contextlib.suppress(sqlite3.Error):
            old.close()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if not _sqlite_unavailable(exc):
                raise
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # IMMEDIATE: a read-then-write (a claim, a slot) must not interleave across processes
        with self.guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, args)

    def legacy_version(self) -> int:
        """The schema version of a store from before the migrations table (1 to 3)."""
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class _Postgres:
    placeholder = "%s"
    for_update = " FOR UPDATE"
    blob_type = "BYTEA"

    def __init__(self, dsn: str, timeout: float) -> None:
        import psycopg

        self.psycopg = psycopg
        self.dsn = dsn
        self.timeout = timeout
        self._db: Any = None
        self.db  # connect now: a bad DSN fails at start

    @property
    def db(self) -> Any:
        """The connection, made again after the server went away (a restart, a failover)."""
        if self._db is None or self._db.closed or self._db.broken:
            try:
                self._db = self.psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.timeout)))
            except self.psycopg.OperationalError as exc:
                raise StoreUnavailable(f"store unavailable: {exc}") from exc
        return self._db

    def check(self) -> bool:
        return False

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except (self.psycopg.OperationalError, self.psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.guard(), self.db.transaction():
            yield

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]

    def legacy_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS beanmail_schema (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM beanmail_schema").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class Store:
    def __init__(self, location: str, timeout: float = 30.0) -> None:
        """``timeout``: how long a write waits for another process's lock before the job is
        deferred. Raises StoreUnavailable (cannot reach or create it) or StoreCorrupt."""
        self.location = location
        if location.startswith(("postgresql://", "postgres://")):
            self._db: _Sqlite | _Postgres = _Postgres(location, timeout)
        else:
            self._db = _Sqlite(location, timeout)
        self.me = worker_id()
        self.journal = Journal(location, self.me)  # keys sent, not yet recorded (worker/journal.py)
        # set by the pipeline from its settings: how long a key found in doubt is held, and how
        # long a silent worker's registry row still says it lives
        self.in_doubt_delay: float = 3600.0
        self.lost_after: float = 60.0
        self._outage_since: float | None = None
        self._migrate()

    def _migrate(self) -> None:
        try:
            with self._db.transaction():
                if isinstance(self._db, _Postgres):  # one migrating host at a time
                    self._db.execute("SELECT pg_advisory_xact_lock(716235)")
                for v in sorted(set(MIGRATIONS) - self._applied()):
                    for statement in MIGRATIONS[v].format(blob=self._db.blob_type).split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute("INSERT INTO beanmail_migrations (version, applied_at) VALUES (?, ?)",
                                     (v, time.time()))
        except sqlite3.DatabaseError as exc:  # guard let it through: not an outage, a wrong file
            raise StoreCorrupt(f"{self.location} is not a usable beanmail store: {exc}") from exc

    def _applied(self) -> set[int]:
        """Migrations are applied by number, each once, in order; numbers may leave gaps, so
        separate features can own separate ranges."""
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS beanmail_migrations"
                   " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        applied = {int(r[0]) for r in db.execute("SELECT version FROM beanmail_migrations").fetchall()}
        if not applied:  # a store from before this table knew only 1..its version
            for v in range(1, db.legacy_version() + 1):
                db.execute("INSERT INTO beanmail_migrations (version, applied_at) VALUES (?, ?)", (v, time.time()))
                applied.add(v)
        return applied

    def schema(self) -> set[int]:
        with self._guard():
            return {int(r[0]) for r in self._db.execute("SELECT version FROM beanmail_migrations").fetchall()}

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Every store error is an outage, logged once when it starts and once when it ends."""
        try:
            if self._db.check():
                self._migrate()
            with self._db.guard():
                yield
        except StoreUnavailable as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                get_logger().error("store unavailable; jobs are deferred until it is back",
                                   store=_safe_location(self.location), error=exc.reason)
            raise
        if self._outage_since is not None:
            get_logger().warning("store available again", store=_safe_location(self.location),
                                 outage_s=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._guard(), self._db.transaction():
            yield

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._guard():
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._guard():
            return self._db.execute(sql, args).fetchall()

    def _run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """A write; the number of rows it changed."""
        with self._guard():
            return int(self._db.execute(sql, args).rowcount)

    def check(self) -> None:
        """Notice a store file deleted (restored from the open handle) or replaced (reopened)
        without a statement: a worker asks between batches, so an idle worker restores it too."""
        with self._guard():
            pass

    # for the modules that keep their own tables here (the registry, feedback, digests): one
    # statement each, with the store's outage handling
    one, all, execute = _one, _all, _run

    # -- claims and the delivery log ------------------------------------------------------------
    def claim(self, key: str, recipient: str, template: str, lease: float) -> int:
        """Take the key for this process and return how often it was taken, or raise: Skipped if
        it already ended, Deferred if a live worker holds it (its lease is renewed while it
        works) or if it is in doubt and its hold has not passed."""
        taken = self.claim_many([(key, recipient, template)], lease)[0]
        if isinstance(taken, Exception):
            raise taken
        return taken

    def claim_many(self, items: Sequence[tuple[str, str, str]], lease: float) -> list[int | Outcome]:
        """``claim`` for a batch of ``(key, recipient, template)`` in one transaction: for each,
        how often it was taken, or the Skipped/Deferred that says why not."""
        try:
            return self._claim_batch(items, lease)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one job's data failed the batch's statement
            if len(items) == 1:
                return [Poison(f"the store refused this job's claim: {storable_text(f'{type(exc).__name__}: {exc}')}")]
        # each job on its own, so the one the store refuses is buried alone and the others go on
        return [taken for item in items for taken in self.claim_many([item], lease)]

    def _claim_batch(self, items: Sequence[tuple[str, str, str]], lease: float) -> list[int | Outcome]:
        now = time.time()
        out: list[int | Outcome] = []
        with self._transaction():
            for key, recipient, template in items:
                # the common case in one statement: a new key, or one nobody holds
                taken = self._db.execute(_CLAIM, (key, recipient, template, self.me, now + lease, now)).fetchone()
                if taken is not None:
                    out.append(int(taken[0]))
                    continue
                try:
                    out.append(self._claim_contested(key, now, lease))
                except (Skipped, Deferred) as exc:
                    out.append(exc)
        return out

    def _claim_contested(self, key: str, now: float, lease: float) -> int:
        """Why the key was not free: ended, held, in doubt, or held by a process that died."""
        row = self._db.execute("SELECT outcome, claimed_by, claim_expires, attempts FROM deliveries"
                               " WHERE key = ?" + self._db.for_update, (key,)).fetchone()
        if row is None:
            raise Deferred("claim raced with a removal; retrying", delay=1)
        outcome, holder, expires, attempts = row
        if outcome in FINAL:
            raise Skipped(f"duplicate: key already {outcome}")
        if outcome == "in_doubt" and expires > now:
            raise Deferred("in doubt: an earlier send got no final reply; held until its retry",
                           delay=max(1, round(expires - now)))
        if outcome == "claimed" and holder != self.me:
            if self.journal.is_dead(holder):
                self._db.execute(_DEAD, (process_of(holder),))
            else:
                if expires > now:
                    raise Deferred(f"duplicate: key claimed by {holder}", delay=max(1, round(expires - now)))
                if self._lives(process_of(holder), now):
                    # its lease ran out while it lives: it sent and could not record it yet (a
                    # store outage), or it stalls; it records it, or is found lost, before anyone sends
                    raise Deferred(f"duplicate: key claimed by {holder}, a live worker whose record of it is pending",
                                   delay=max(1, round(self.lost_after / 4)))
            # taken over from a dead holder, or one silent past its lease and lost: its journal,
            # where this host can read it, says how far it got
            sent, ending = self.journal.read(holder)
            if key in sent:  # it went; its worker never recorded it
                self._db.execute(_JOURNALED_SENT, (_JOURNALED, now, key, holder))
                raise Skipped(f"duplicate: key already sent ({_JOURNALED})")
            if key in ending:  # its end of data went, the reply did not come back: maybe delivered
                self._db.execute(_JOURNALED_IN_DOUBT, (_JOURNALED_DOUBT, now + self.in_doubt_delay, now, key, holder))
                raise Deferred(_JOURNALED_DOUBT, delay=max(1, round(self.in_doubt_delay)))
        taken = self._db.execute(
            "UPDATE deliveries SET outcome = 'claimed', attempts = attempts + 1, claimed_by = ?,"
            " claim_expires = ?, updated_at = ? WHERE key = ? AND outcome = ? AND claimed_by = ?",
            (self.me, now + lease, now, key, outcome, holder),
        ).rowcount
        if not taken:
            raise Deferred("duplicate: key claimed by another worker meanwhile", delay=1)
        return int(attempts) + 1

    def _lives(self, process: str, now: float) -> bool:
        """The registry (worker/registry.py) heard from this process within ``lost_after``."""
        row = self._db.execute("SELECT state, last_seen FROM workers WHERE id = ?", (process,)).fetchone()
        return row is not None and row[0] in ("running", "disabled") and row[1] >= now - self.lost_after

    def renew(self, key: str, lease: float) -> bool:
        """Extend this process's claim on ``key`` (called through a long send); False if the
        claim is no longer ours."""
        return self.renew_many([key], lease) > 0

    def renew_many(self, keys: Sequence[str], lease: float) -> int:
        """``renew`` for several keys in one statement; how many claims were still ours."""
        return len(self.confirm_many(keys, lease))

    def confirm_many(self, keys: Iterable[str], lease: float) -> set[str]:
        """Renew this process's claims on ``keys``; the keys whose claim was still its own. The
        holder id is the fencing token: a claim another worker took over (or that ended) is not
        renewed, and its key is not in the answer."""
        now, mine = time.time(), set()
        for part in chunks(sorted(set(keys))):
            mine |= {r[0] for r in self._all(f"UPDATE deliveries SET claim_expires = ?, updated_at = ?"
                                             f" WHERE key IN ({', '.join('?' * len(part))}) AND outcome = 'claimed'"
                                             f" AND claimed_by = ? RETURNING key", (now + lease, now, *part, self.me))}
        return mine

    def finish(self, key: str, recipient: str, template: str, outcome: str, reason: str = "",
               reply: str = "", *, overwrite_final: bool = True, hold: float = 0.0, free: bool = False) -> None:
        """Record how a job ended; any outcome releases the claim. Without ``overwrite_final``
        (the job never held the claim) a row that ended or is claimed is left alone. ``hold``
        keeps other copies of the key away that long (in doubt); ``free`` counts a release that
        costs no retry."""
        self.finish_many([Finish(key, recipient, template, outcome, reason, reply, overwrite_final, hold, free)])

    def finish_many(self, rows: Sequence[Finish]) -> None:
        """``finish`` for a batch, in one transaction; the journal of what was sent is emptied
        once it is committed."""
        if not rows:
            return
        try:
            self._finish_batch(rows)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one row's data failed the batch: each row alone
            if len(rows) == 1:
                get_logger().error("delivery not recorded: the store refused the row", key=storable_text(rows[0].key),
                                   outcome=rows[0].outcome, error=storable_text(f"{type(exc).__name__}: {exc}"))
            else:
                for f in rows:
                    self.finish_many([f])
        self.journal.recorded(f.key for f in rows)

    def _finish_batch(self, rows: Sequence[Finish]) -> None:
        now = time.time()
        with self._transaction():
            for f in rows:
                self._db.execute(
                    _FINISH if f.overwrite_final else _FINISH_UNCLAIMED,
                    (f.key, f.recipient, f.template, f.outcome, storable_text(f.reason), storable_text(f.reply),
                     now + f.hold if f.hold else 0, int(f.free), now),
                )

    def replay_many(self, rows: Sequence[Finish]) -> None:
        """Outcomes this worker could not record during an outage, recorded now (one
        transaction): what it sent is recorded sent unless the key ended meanwhile; any other
        outcome only while the claim is still this worker's (a key another worker took over
        since is that worker's to record)."""
        if not rows:
            return
        now = time.time()
        with self._transaction():
            for f in rows:
                args = [f.key, f.recipient, f.template, f.outcome, storable_text(f.reason), storable_text(f.reply),
                        now + f.hold if f.hold else 0, int(f.free), now]
                if f.outcome == "sent":
                    self._db.execute(_FINISH + " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced')", args)
                else:
                    self._db.execute(_FINISH + " WHERE deliveries.outcome = 'claimed' AND deliveries.claimed_by = ?",
                                     [*args, self.me])
        self.journal.recorded(f.key for f in rows)

    def add_free_releases(self, rows: Sequence[tuple[str, str, str, int]]) -> None:
        """Releases an outage caused, ``(key, recipient, template, count)``: they cost no retry.
        A key with no row yet gets a ``deferred`` one to hold the count."""
        if not rows:
            return
        now = time.time()
        with self._transaction():
            for key, recipient, template, n in rows:
                self._db.execute(
                    "INSERT INTO deliveries (key, recipient, template, outcome, free_releases, updated_at)"
                    " VALUES (?, ?, ?, 'deferred', ?, ?) ON CONFLICT (key) DO UPDATE SET"
                    " free_releases = deliveries.free_releases + excluded.free_releases",
                    (key, recipient, template, n, now))

    def recover_journals(self) -> int:
        """Record what dead processes sent and never recorded (their journals, where this host
        sees them): sent, or in doubt for a lone ``?key``; release their other claims at once
        and remove those journals. How many keys were recorded."""
        recorded = 0
        for holder in self.journal.others():
            if not self.journal.is_dead(holder):
                continue
            sent, ending = self.journal.read(holder)
            now = time.time()
            with self._transaction():
                for key in sorted(sent):
                    recorded += self._db.execute(_JOURNALED_SENT, (_JOURNALED, now, key, holder)).rowcount
                for key in sorted(ending):  # maybe delivered: held back for the in-doubt delay
                    recorded += self._db.execute(_JOURNALED_IN_DOUBT, (_JOURNALED_DOUBT, now + self.in_doubt_delay,
                                                                       now, key, holder)).rowcount
                # what else it held never reached its end of data: free for the next worker now
                self._db.execute("UPDATE deliveries SET claim_expires = 0 WHERE outcome = 'claimed'"
                                 " AND claimed_by = ?", (holder,))
                self._db.execute(_DEAD, (process_of(holder),))
            self.journal.remove(holder)
        return recorded

    def free_releases(self, key: str) -> int:
        """Releases of this key that named their own delay: they do not count as attempts."""
        row = self._one("SELECT free_releases FROM deliveries WHERE key = ?", (key,))
        return int(row[0]) if row else 0

    def deliveries(self, *, key: str | None = None, recipient: str | None = None,
                   limit: int = 100) -> list[Delivery]:
        where, args = "1 = 1", []
        if key is not None:
            where, args = "key = ?", [key]
        elif recipient is not None:
            where, args = "recipient = ?", [recipient.lower()]
        rows = self._all(
            f"SELECT key, recipient, template, outcome, reason, reply, attempts, updated_at"
            f" FROM deliveries WHERE {where} ORDER BY updated_at DESC LIMIT ?", (*args, limit)
        )
        return [Delivery(*row) for row in rows]

    def outcome_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT outcome, count(*) FROM deliveries GROUP BY outcome"))

    # -- large messages -------------------------------------------------------------------------
    def blob(self, ref: str) -> bytes | None:
        """A job body a producer stored by reference (``producer.blobs``)."""
        row = self._one("SELECT data FROM blobs WHERE id = ?", (ref,))
        return bytes(row[0]) if row else None

    def delete_blob(self, ref: str) -> None:
        self._run("DELETE FROM blobs WHERE id = ?", (ref,))

    # -- per-domain connections across the fleet ------------------------------------------------
    def take_mx_slot(self, domain: str, holder: str, cap: int, lease: float) -> bool:
        """One of the fleet's ``cap`` connections to ``domain`` for ``holder`` (renewed if it has
        it already); False when all are held. A slot not renewed for ``lease`` seconds is free."""
        now = time.time()
        db = self._db
        with self._transaction():
            if isinstance(db, _Postgres):  # SQLite's IMMEDIATE transaction serializes already
                db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"mx_slots:{domain}",))
            db.execute("DELETE FROM mx_slots WHERE domain = ? AND expires <= ?", (domain, now))
            if db.execute("UPDATE mx_slots SET expires = ? WHERE domain = ? AND holder = ?",
                          (now + lease, domain, holder)).rowcount:
                return True
            (held,) = db.execute("SELECT count(*) FROM mx_slots WHERE domain = ?", (domain,)).fetchone()
            if held >= cap:
                return False
            db.execute("INSERT INTO mx_slots (domain, holder, expires) VALUES (?, ?, ?)", (domain, holder, now + lease))
        return True

    def drop_mx_slot(self, domain: str, holder: str) -> None:
        self._run("DELETE FROM mx_slots WHERE domain = ? AND holder = ?", (domain, holder))

    # -- per-domain rate limits -----------------------------------------------------------------
    def take_slot(self, domain: str, rate: float, key: str, now: float | None = None) -> float:
        """A send slot for ``domain`` at ``rate`` messages/s, shared by every worker on this store.
        Returns 0 when the message may go now; otherwise the slot is booked for ``key`` and the
        seconds until it are returned, so the job comes back to a slot of its own."""
        now = time.time() if now is None else now
        db = self._db
        with self._transaction():
            booked = db.execute("SELECT slot_at FROM rate_bookings WHERE key = ?", (key,)).fetchone()
            if booked is not None:
                if booked[0] <= now + 0.01:
                    db.execute("DELETE FROM rate_bookings WHERE key = ?", (key,))
                    return 0.0
                return float(booked[0] - now)
            db.execute("INSERT INTO rate_slots (domain, next_at) VALUES (?, ?) ON CONFLICT (domain) DO NOTHING",
                       (domain, now))
            (next_at,) = db.execute("SELECT next_at FROM rate_slots WHERE domain = ?" + db.for_update,
                                    (domain,)).fetchone()
            slot = max(next_at, now)
            db.execute("UPDATE rate_slots SET next_at = ? WHERE domain = ?", (slot + 1.0 / rate, domain))
            if slot <= now + 0.01:
                return 0.0
            db.execute("DELETE FROM rate_bookings WHERE slot_at < ?", (now - 3600,))
            db.execute("INSERT INTO rate_bookings (key, slot_at) VALUES (?, ?)", (key, slot))
        return float(slot - now)

    # -- suppression ----------------------------------------------------------------------------
    # A suppression in force has expires_at 0 (for good) or in the future (a soft bounce's, which
    # lapses by itself). How much each source holds back, for the pipeline's check: bounce and
    # operator stop every message; complaint, unsubscribe and soft-bounce let urgent mail through.
    _STRENGTH = {"bounce": 3, "operator": 3, "complaint": 2, "unsubscribe": 2, "soft-bounce": 1}
    _IN_FORCE = "(expires_at = 0 OR expires_at > ?)"

    def suppressed(self, address: str) -> tuple[str, str] | None:
        row = self._one(f"SELECT source, reason FROM suppression WHERE address = ? AND {self._IN_FORCE}",
                        (address.lower(), time.time()))
        return (row[0], row[1]) if row else None

    def suppressed_many(self, addresses: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``suppressed`` for a batch's recipients in one query, by lower-cased address."""
        now = time.time()
        rows = self.all_in("SELECT address, source, reason, expires_at FROM suppression WHERE address IN ({marks})",
                           {a.lower() for a in addresses})
        return {row[0]: (row[1], row[2]) for row in rows if not row[3] or row[3] > now}

    def all_in(self, sql: str, values: Iterable[Any]) -> list[Any]:
        """The rows of ``sql`` whose ``IN ({marks})`` takes ``values``, in as many queries as the
        database's limit on parameters needs."""
        rows = []
        for part in chunks(sorted(set(values))):
            rows += self._all(sql.format(marks=", ".join("?" * len(part))), part)
        return rows

    def suppress(self, address: str, reason: str, source: str, *, until: float = 0.0) -> bool:
        """Suppress ``address`` (``until``: when it lapses, 0 for good). A suppression in force that
        holds back more is kept (a soft bounce does not turn a hard bounce into one that lapses, nor
        an unsubscribe let urgent mail reach an address that hard-bounced); True if written."""
        address, now = address.lower(), time.time()
        strength = self._STRENGTH.get(source, 3)
        with self._transaction():
            row = self._db.execute("SELECT source, expires_at FROM suppression WHERE address = ?",
                                   (address,)).fetchone()
            if row is not None and (not row[1] or row[1] > now):
                held = self._STRENGTH.get(row[0], 3)
                if held > strength or (held == strength and not row[1] and until):
                    return False
            self._db.execute(
                "INSERT INTO suppression (address, reason, source, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at",
                (address, reason, source, now, until))
        return True

    def unsuppress(self, address: str) -> bool:
        return self._run("DELETE FROM suppression WHERE address = ?", (address.lower(),)) > 0

    def suppression_list(self) -> list[tuple[str, str, str, float, float]]:
        """The suppressions in force: (address, source, reason, since, until; 0: for good)."""
        return [tuple(r) for r in self._all(
            f"SELECT address, source, reason, created_at, expires_at FROM suppression WHERE {self._IN_FORCE}"
            " ORDER BY address", (time.time(),))]

    # -- buried jobs ----------------------------------------------------------------------------
    def record_failure(self, server: str, job_id: int, tube: str, outcome: str, reason: str,
                       body: bytes) -> None:
        self._run(
            "INSERT INTO failures (server, job_id, tube, outcome, reason, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (server, job_id, storable_text(tube), outcome, storable_text(reason),
             storable_text(body[:65536].decode("utf-8", "replace")), time.time()),
        )

    def failure(self, server: str, job_id: int) -> tuple[str, str, float] | None:
        return self._one(
            "SELECT outcome, reason, created_at FROM failures WHERE server = ? AND job_id = ?"
            " ORDER BY created_at DESC LIMIT 1", (server, job_id))

    def failed_job_ids(self, server: str, limit: int = 200) -> list[int]:
        rows = self._all(
            "SELECT job_id FROM failures WHERE server = ? GROUP BY job_id ORDER BY job_id DESC LIMIT ?",
            (server, limit))
        return [r[0] for r in rows]

    # -- the console's figures (worker.web) --------------------------------------------------------
    def add_console_counts(self, rows: Sequence[tuple[int, str, str, int, float, float, Sequence[int]]],
                           domains: Sequence[tuple[int, str, str, int]] = (), prune_before: int = 0) -> None:
        """Counters a worker process gathered in memory, added in one transaction: ``rows`` of
        (minute, tube, outcome, messages, latency_sum, latency_max, per-bucket latency counts),
        ``domains`` of (minute, recipient domain, outcome, messages); ``prune_before`` drops the
        per-domain minutes before it."""
        if not rows and not domains:
            return
        with self._transaction():
            if rows:
                cols = ", ".join(f"l{i}" for i in range(len(LATENCY_BUCKETS) + 1))
                marks = ", ".join("?" for _ in range(len(LATENCY_BUCKETS) + 7))
                adds = ", ".join(f"{c} = console_counts.{c} + excluded.{c}"
                                 for c in ("messages", "latency_sum", *cols.split(", ")))
                adds += (", latency_max = CASE WHEN excluded.latency_max > console_counts.latency_max"
                         " THEN excluded.latency_max ELSE console_counts.latency_max END")
                args: list[Any] = []
                for minute, tube, outcome, messages, latency_sum, latency_max, buckets in rows:
                    args += [minute, tube, outcome, messages, latency_sum, latency_max, *buckets]
                self._db.execute(
                    f"INSERT INTO console_counts (minute, tube, outcome, messages, latency_sum, latency_max, {cols})"
                    f" VALUES {', '.join(f'({marks})' for _ in rows)}"
                    f" ON CONFLICT (minute, tube, outcome) DO UPDATE SET {adds}", args)
            if domains:
                self._db.execute(
                    "INSERT INTO console_domains (minute, domain, outcome, messages) VALUES "
                    + ", ".join("(?, ?, ?, ?)" for _ in domains)
                    + " ON CONFLICT (minute, domain, outcome) DO UPDATE SET"
                      " messages = console_domains.messages + excluded.messages",
                    [x for row in domains for x in row])
            if prune_before:
                self._db.execute("DELETE FROM console_domains WHERE minute < ?", (prune_before,))

    def console_rates(self, since_minute: int) -> list[tuple[int, str, int]]:
        """(minute, outcome, messages) from ``since_minute`` on, every tube together."""
        return [(int(m), str(o), int(n)) for m, o, n in self._all(
            "SELECT minute, outcome, sum(messages) FROM console_counts WHERE minute >= ?"
            " GROUP BY minute, outcome ORDER BY minute", (since_minute,))]

    def console_totals(self) -> list[tuple[str, str, int]]:
        """(tube, outcome, messages) since the store began: the pool's counters."""
        return [(str(t), str(o), int(n)) for t, o, n in self._all(
            "SELECT tube, outcome, sum(messages) FROM console_counts GROUP BY tube, outcome")]

    def console_latency(self, since_minute: int = 0) -> tuple[list[int], float, float]:
        """Per-bucket counts (LATENCY_BUCKETS, then above), the sum and the largest of the seconds,
        of mail sent from ``since_minute`` on."""
        cols = ", ".join(f"coalesce(sum(l{i}), 0)" for i in range(len(LATENCY_BUCKETS) + 1))
        row = self._one(f"SELECT coalesce(sum(latency_sum), 0), coalesce(max(latency_max), 0), {cols}"
                        f" FROM console_counts WHERE minute >= ? AND outcome = 'sent'", (since_minute,))
        return [int(x) for x in row[2:]], float(row[0]), float(row[1])

    def console_latency_by_minute(self, since_minute: int) -> list[tuple[int, list[int], float]]:
        """(minute, per-bucket counts, the largest seconds) of mail sent in each minute from
        ``since_minute`` on."""
        cols = ", ".join(f"sum(l{i})" for i in range(len(LATENCY_BUCKETS) + 1))
        rows = self._all(f"SELECT minute, max(latency_max), {cols} FROM console_counts"
                         f" WHERE minute >= ? AND outcome = 'sent' GROUP BY minute ORDER BY minute", (since_minute,))
        return [(int(r[0]), [int(x) for x in r[2:]], float(r[1])) for r in rows]

    def domain_figures(self, since_minute: int) -> list[tuple[str, str, int]]:
        """(recipient domain, outcome, messages) the workers counted from ``since_minute`` on."""
        return [(str(d), str(o), int(n)) for d, o, n in self._all(
            "SELECT domain, outcome, sum(messages) FROM console_domains WHERE minute >= ?"
            " GROUP BY domain, outcome", (since_minute,))]

    def suppression_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._all(
            f"SELECT source, count(*) FROM suppression WHERE {self._IN_FORCE} GROUP BY source", (time.time(),))}

    def suppression_search(self, text: str = "", limit: int = 200) -> list[tuple[str, str, str, float, float]]:
        """Suppressions in force whose address contains ``text`` (any case), newest first:
        (address, source, reason, since, until; 0: for good)."""
        return [tuple(r) for r in self._all(
            f"SELECT address, source, reason, created_at, expires_at FROM suppression WHERE address LIKE ?"
            f" AND {self._IN_FORCE} ORDER BY created_at DESC LIMIT ?", (f"%{text.lower()}%", time.time(), limit))]

    def failures_of(self, server: str, job_id: int) -> list[tuple[str, str, str, str, float]]:
        """Every time the job was buried: (tube, outcome, reason, body, created_at), oldest first."""
        return [tuple(r) for r in self._all(
            "SELECT tube, outcome, reason, body, created_at FROM failures WHERE server = ? AND job_id = ?"
            " ORDER BY created_at", (server, job_id))]

    def failures_mentioning(self, text: str, limit: int = 20) -> list[tuple[int, str, str, str, float]]:
        """Buried records whose body holds ``text`` (a key): (job_id, tube, outcome, reason, created_at)."""
        return [tuple(r) for r in self._all(
            "SELECT job_id, tube, outcome, reason, created_at FROM failures WHERE body LIKE ?"
            " ORDER BY created_at DESC LIMIT ?", (f"%{text}%", limit))]

    # -- feedback: return paths, bounces, the bulk brake (worker/feedback) -----------------------
    def remember_message(self, token: str, key: str, recipient: str, template: str, bulk: bool) -> None:
        """What a VERP token names, written before the message goes (a bounce may outrun us)."""
        self._run("INSERT INTO feedback_messages (token, key, recipient, template, bulk, created_at)"
                  " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET created_at = excluded.created_at",
                  (token, key, recipient, template, int(bulk), time.time()))

    def message_for_token(self, token: str) -> tuple[str, str, str, bool] | None:
        row = self._one("SELECT key, recipient, template, bulk FROM feedback_messages WHERE token = ?", (token,))
        return (row[0], row[1], row[2], bool(row[3])) if row else None

    def record_bounce(self, *, source: str, kind: str, classification: str, address: str = "", key: str = "",
                      status: str = "", detail: str = "", raw: str = "") -> str:
        bounce_id = f"{time.time_ns():x}{os.urandom(3).hex()}"
        self._run("INSERT INTO bounces (id, received_at, source, kind, classification, address, key, status,"
                  " detail, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (bounce_id, time.time(), source, kind, classification, address.lower(), key, status,
                   detail[:2000].replace("\0", "\ufffd"),  # PostgreSQL text holds no NUL
                   raw[:262144].replace("\0", "\ufffd")))
        return bounce_id

    def bounces(self, limit: int = 100, address: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE address = ?", [address.lower()]) if address else ("", [])
        rows = self._all(f"SELECT id, received_at, source, kind, classification, address, key, status, detail"
                         f" FROM bounces {where} ORDER BY received_at DESC LIMIT ?", (*args, limit))
        names = ("id", "received_at", "source", "kind", "classification", "address", "key", "status", "detail")
        return [dict(zip(names, r)) for r in rows]

    def bounce_raw(self, bounce_id: str) -> str | None:
        row = self._one("SELECT raw FROM bounces WHERE id = ?", (bounce_id,))
        return row[0] if row else None

    def soft_bounces(self, address: str, since: float) -> int:
        """The messages to ``address`` that soft-bounced since ``since``: one however many
        times a provider reported it (Mailgun posts a failure for each of its retries)."""
        row = self._one("SELECT count(DISTINCT key) FROM bounces WHERE address = ? AND classification = 'soft'"
                        " AND received_at >= ?", (address.lower(), since))
        return int(row[0])

    def first_webhook_event(self, provider: str, event_id: str, keep: float = 30 * 86400) -> bool:
        """Remember a provider's event id; False if it was seen before (a replay or a retry of a
        request already handled). Ids older than ``keep`` seconds are forgotten."""
        now = time.time()
        with self._transaction():
            self._db.execute("DELETE FROM webhook_events WHERE received_at < ?", (now - keep,))
            return self._db.execute(
                "INSERT INTO webhook_events (provider, event_id, received_at) VALUES (?, ?, ?)"
                " ON CONFLICT (provider, event_id) DO NOTHING", (provider, event_id[:500], now)).rowcount == 1

    def webhook_event_seen(self, provider: str, event_id: str) -> bool:
        return self._one("SELECT 1 FROM webhook_events WHERE provider = ? AND event_id = ?",
                         (provider, event_id[:500])) is not None

    def note_bounce(self, key: str, reason: str, reply: str) -> bool:
        """A bounce that came back after the message was accepted, on the delivery's own row."""
        return self._run("UPDATE deliveries SET outcome = 'bounced', reason = ?, reply = ?, updated_at = ?"
                         " WHERE key = ? AND outcome IN ('sent', 'in_doubt', 'bounced')",
                         (reason, reply, time.time(), key)) > 0

    def note_complaint(self, token: str, key: str, reason: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE feedback_messages SET complained = 1 WHERE token = ?", (token,))
            self._db.execute("UPDATE deliveries SET reason = ?, updated_at = ? WHERE key = ?",
                             (reason, time.time(), key))

    def bulk_feedback(self, window: int, since: float = 0.0) -> tuple[int, int, int]:
        """(sent, bounced, complained) over the last ``window`` bulk messages sent after ``since``."""
        row = self._one(
            "SELECT count(*), coalesce(sum(CASE WHEN d.outcome = 'bounced' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(m.complained), 0) FROM (SELECT key, complained FROM feedback_messages"
            " WHERE bulk = 1 AND created_at > ? ORDER BY created_at DESC LIMIT ?) m"
            " JOIN deliveries d ON d.key = m.key WHERE d.outcome IN ('sent', 'bounced')", (since, window))
        return int(row[0]), int(row[1]), int(row[2])

    def brake(self, name: str = "bulk") -> tuple[bool, str, float]:
        """(engaged, reason, since): a brake never set is off since the beginning."""
        row = self._one("SELECT engaged, reason, changed_at FROM brake WHERE name = ?", (name,))
        return (bool(row[0]), row[1], float(row[2])) if row else (False, "", 0.0)

    def set_brake(self, engaged: bool, reason: str, name: str = "bulk") -> bool:
        """True when this call changed it (two workers tripping at once trip it once)."""
        return self._run(
            "INSERT INTO brake (name, engaged, reason, changed_at) VALUES (?, ?, ?, ?) ON CONFLICT (name)"
            " DO UPDATE SET engaged = excluded.engaged, reason = excluded.reason, changed_at = excluded.changed_at"
            " WHERE brake.engaged <> excluded.engaged", (name, int(engaged), reason, time.time())) > 0

    # -- delivery events (worker/events) ---------------------------------------------------------
    def remember_refs(self, rows: Sequence[tuple[str, str, str]], keep: float = 90 * 86400) -> None:
        """(key, template, entities JSON) of sent messages, for the events that come after the
        send; rows older than ``keep`` seconds go in the same transaction, now and then."""
        now = time.time()
        with self._transaction():
            for key, template, entities in rows:
                self._db.execute("INSERT INTO event_refs (key, template, entities, created_at) VALUES (?, ?, ?, ?)"
                                 " ON CONFLICT (key) DO NOTHING", (key, template, entities, now))
            if rows and hash(rows[0][0]) % 1000 == 0:
                self._db.execute("DELETE FROM event_refs WHERE created_at < ?", (now - keep,))

    def refs_for(self, key: str) -> tuple[str, str] | None:
        """(template, entities JSON) remembered for ``key``."""
        row = self._one("SELECT template, entities FROM event_refs WHERE key = ?", (key,))
        return (row[0], row[1]) if row else None

    def remember_reply(self, token: str, key: str, recipient: str, template: str, entities: str) -> None:
        """What a reply address's token names, written before the message goes."""
        self._run("INSERT INTO reply_messages (token, key, recipient, template, entities, created_at)"
                  " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO NOTHING",
                  (token, key, recipient.lower(), template, entities, time.time()))

    def reply_for(self, token: str) -> tuple[str, str, str, str] | None:
        """(key, recipient, template, entities JSON) of a reply token's message."""
        row = self._one("SELECT key, recipient, template, entities FROM reply_messages WHERE token = ?", (token,))
        return (row[0], row[1], row[2], row[3]) if row else None

    def record_inbound(self, *, outcome: str, reason: str = "", key: str = "", address: str = "", raw: str = "") -> str:
        """A message `beanmail inbound` read: passed on as an event, or refused and why."""
        inbound_id = f"{time.time_ns():x}{os.urandom(3).hex()}"
        self._run("INSERT INTO inbound (id, received_at, outcome, reason, key, address, raw) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (inbound_id, time.time(), outcome, reason[:2000].replace("\0", "\ufffd"), key, address.lower(),
                   raw[:262144].replace("\0", "\ufffd")))
        return inbound_id

    def inbound(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._all("SELECT id, received_at, outcome, reason, key, address FROM inbound"
                         " ORDER BY received_at DESC LIMIT ?", (limit,))
        return [dict(zip(("id", "received_at", "outcome", "reason", "key", "address"), r)) for r in rows]

    def close(self) -> None:
        self.journal.close()
        self._db.close()
