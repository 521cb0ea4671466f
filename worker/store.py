"""The delivery store: the delivery log and claims (nothing sent twice), the suppression list,
per-domain send slots, and the reasons jobs were buried (beanstalkd keeps none).

``BEANMAIL_STORE`` is an SQLite file (WAL, so a pool of processes on one host shares it) or a
``postgresql://`` DSN for a fleet of worker hosts. The SQL is written once, in the dialect both
understand; a backend only says how to connect, open a transaction and spell a placeholder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .outcomes import Deferred, Skipped

# Types are spelled so that both engines read them right: DOUBLE PRECISION is a float8 in
# PostgreSQL (its REAL would lose the sub-second part of a timestamp) and REAL-affine in SQLite.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- claimed | sent | skipped | bounced | deferred | exhausted | poison
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
}
SCHEMA_VERSION = max(MIGRATIONS)
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


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """A claim held by a process of this host that no longer exists (killed, then restarted by
    supervisord) need not wait for its lease to run out."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StoreUnavailable(Deferred):
    """The store cannot be reached or is locked past its timeout: retry the job later."""


class StoreCorrupt(Exception):
    """The store's file is not a beanmail store (damaged, or another program's file): a person
    must look; commands exit 78 with this one line."""


class _Sqlite:
    placeholder = "?"
    for_update = ""

    def __init__(self, path: str, timeout: float) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._wal()
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _wal(self) -> None:
        """Switch a new file to WAL. Several workers starting on a new store at once race for
        it, and that lock is not one SQLite's busy timeout waits for: retry for a while."""
        deadline = time.monotonic() + 30
        while self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # IMMEDIATE: a read-then-write (a claim, a slot) must not interleave across processes
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        try:
            return self.db.execute(sql, args)
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, I/O
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")

    def close(self) -> None:
        self.db.close()


class _Postgres:
    placeholder = "%s"
    for_update = " FOR UPDATE"

    def __init__(self, dsn: str, timeout: float) -> None:
        import psycopg

        try:
            self.db = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout)))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        import psycopg

        try:
            with self.db.transaction():
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        import psycopg

        try:
            return self.db.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc

    def schema_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS beanmail_schema (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM beanmail_schema").fetchone()
        return int(row[0] or 0)

    def set_schema_version(self, version: int) -> None:
        self.db.execute("INSERT INTO beanmail_schema (version) VALUES (%s)", (version,))

    def close(self) -> None:
        self.db.close()


class Store:
    def __init__(self, location: str, timeout: float = 30.0) -> None:
        """``timeout``: how long a write waits for another process's lock before the job is deferred."""
        self.location = location
        if location.startswith(("postgresql://", "postgres://")):
            self._db: _Sqlite | _Postgres = _Postgres(location, timeout)
        else:
            self._db = _Sqlite(location, timeout)
        self.me = worker_id()
        self._migrate()

    def _migrate(self) -> None:
        with self._db.transaction():
            if isinstance(self._db, _Postgres):  # one migrating host at a time
                self._db.execute("SELECT pg_advisory_xact_lock(716235)")
            version = self._db.schema_version()
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.set_schema_version(v)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    # -- claims and the delivery log ------------------------------------------------------------
    def claim(self, key: str, recipient: str, template: str, lease: float) -> int:
        """Take the key for this process and return how often it was taken, or raise: Skipped if
        it already ended, Deferred if a live worker holds it (retried after its lease, so a
        crashed holder loses nothing)."""
        now = time.time()
        # the common case in one atomic statement: a new key, or one nobody holds
        taken = self._one(
            "INSERT INTO deliveries (key, recipient, template, outcome, attempts, claimed_by,"
            " claim_expires, updated_at) VALUES (?, ?, ?, 'claimed', 1, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET outcome = 'claimed', attempts = deliveries.attempts + 1,"
            " claimed_by = excluded.claimed_by, claim_expires = excluded.claim_expires,"
            " updated_at = excluded.updated_at"
            " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced')"
            " AND (deliveries.outcome <> 'claimed' OR deliveries.claim_expires <= excluded.updated_at"
            "      OR deliveries.claimed_by = excluded.claimed_by)"
            " RETURNING attempts",
            (key, recipient, template, self.me, now + lease, now),
        )
        if taken is not None:
            return int(taken[0])
        with self._db.transaction():  # why not: ended, held, or held by a process that died
            row = self._one("SELECT outcome, claimed_by, claim_expires, attempts FROM deliveries WHERE key = ?"
                            + self._db.for_update, (key,))
            if row is None:
                raise Deferred("claim raced with a removal; retrying", delay=1)
            outcome, holder, expires, attempts = row
            if outcome in FINAL:
                raise Skipped(f"duplicate: key already {outcome}")
            if outcome == "claimed" and holder != self.me and expires > now and not holder_is_dead(holder):
                raise Deferred(f"duplicate: key claimed by {holder}", delay=max(1, round(expires - now)))
            taken = self._db.execute(
                "UPDATE deliveries SET outcome = 'claimed', attempts = attempts + 1, claimed_by = ?,"
                " claim_expires = ?, updated_at = ? WHERE key = ? AND outcome = ? AND claimed_by = ?",
                (self.me, now + lease, now, key, outcome, holder),
            ).rowcount
            if not taken:
                raise Deferred("duplicate: key claimed by another worker meanwhile", delay=1)
        return int(attempts) + 1

    def finish(self, key: str, recipient: str, template: str, outcome: str, reason: str = "",
               reply: str = "", *, overwrite_final: bool = True) -> None:
        """Record how a job ended; any outcome releases the claim. Without ``overwrite_final``
        (the job never held the claim) a row that ended or is claimed is left alone."""
        guard = "" if overwrite_final else " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced', 'claimed')"
        self._db.execute(
            "INSERT INTO deliveries (key, recipient, template, outcome, reason, reply, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET outcome = excluded.outcome,"
            " reason = excluded.reason, reply = excluded.reply, claimed_by = '', claim_expires = 0,"
            " updated_at = excluded.updated_at" + guard,
            (key, recipient, template, outcome, reason, reply, time.time()),
        )

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

    # -- per-domain rate limits -----------------------------------------------------------------
    def take_slot(self, domain: str, rate: float, key: str, now: float | None = None) -> float:
        """A send slot for ``domain`` at ``rate`` messages/s, shared by every worker on this store.
        Returns 0 when the message may go now; otherwise the slot is booked for ``key`` and the
        seconds until it are returned, so the job comes back to a slot of its own."""
        now = time.time() if now is None else now
        with self._db.transaction():
            booked = self._one("SELECT slot_at FROM rate_bookings WHERE key = ?", (key,))
            if booked is not None:
                if booked[0] <= now + 0.01:
                    self._db.execute("DELETE FROM rate_bookings WHERE key = ?", (key,))
                    return 0.0
                return float(booked[0] - now)
            self._db.execute("INSERT INTO rate_slots (domain, next_at) VALUES (?, ?) ON CONFLICT (domain) DO NOTHING",
                             (domain, now))
            (next_at,) = self._one("SELECT next_at FROM rate_slots WHERE domain = ?" + self._db.for_update, (domain,))
            slot = max(next_at, now)
            self._db.execute("UPDATE rate_slots SET next_at = ? WHERE domain = ?", (slot + 1.0 / rate, domain))
            if slot <= now + 0.01:
                return 0.0
            self._db.execute("DELETE FROM rate_bookings WHERE slot_at < ?", (now - 3600,))
            self._db.execute("INSERT INTO rate_bookings (key, slot_at) VALUES (?, ?)", (key, slot))
        return float(slot - now)

    # -- suppression ----------------------------------------------------------------------------
    def suppressed(self, address: str) -> tuple[str, str] | None:
        row = self._one("SELECT source, reason FROM suppression WHERE address = ?", (address.lower(),))
        return (row[0], row[1]) if row else None

    def suppress(self, address: str, reason: str, source: str) -> None:
        self._db.execute(
            "INSERT INTO suppression (address, reason, source, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source",
            (address.lower(), reason, source, time.time()),
        )

    def unsuppress(self, address: str) -> bool:
        return self._db.execute("DELETE FROM suppression WHERE address = ?", (address.lower(),)).rowcount > 0

    def suppression_list(self) -> list[tuple[str, str, str, float]]:
        return [tuple(r) for r in self._all(
            "SELECT address, source, reason, created_at FROM suppression ORDER BY address")]

    # -- buried jobs ----------------------------------------------------------------------------
    def record_failure(self, server: str, job_id: int, tube: str, outcome: str, reason: str,
                       body: bytes) -> None:
        self._db.execute(
            "INSERT INTO failures (server, job_id, tube, outcome, reason, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (server, job_id, tube, outcome, reason, body[:65536].decode("utf-8", "replace"), time.time()),
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

    def close(self) -> None:
        self._db.close()
