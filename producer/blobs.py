"""Large job bodies by reference: beanstalkd refuses a job over its max-job-size (64 KiB by
default), so a message with attachments is stored here and the job carries only its reference.

The table is the worker's own (``BEANMAIL_STORE``: an SQLite file or a ``postgresql://`` DSN);
either side creates it if missing, with the same statement. A reference is the SHA-256 of the
data, so putting the same body twice stores it once and a retried put is harmless.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_LOCATION = "var/beanmail.sqlite3"
_REF = re.compile(r"sha256:[0-9a-f]{64}")
_TABLE = ("CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, data {blob} NOT NULL,"
          " created_at DOUBLE PRECISION NOT NULL)")
# a store's name for itself, so that a blob reference can say which store holds it
IDENTITY_TABLE = "CREATE TABLE IF NOT EXISTS store_identity (id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)"
IDENTITY_READ = "SELECT id FROM store_identity ORDER BY created_at, id LIMIT 1"
IDENTITY_WRITE = "INSERT INTO store_identity (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
PUT = "INSERT INTO blobs (id, data, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING"


def read_or_make_identity(one: Callable[[str], Any], run: Callable[[str, tuple[Any, ...]], Any]) -> str:
    """The store's identity over a connection's ``one(sql)`` (first row or None) and ``run(sql,
    args)``: read, else made by this process (two at once: the first by time and id wins for all)."""
    row = one(IDENTITY_READ)
    if row is None:
        run(IDENTITY_WRITE, (uuid.uuid4().hex, time.time()))
        row = one(IDENTITY_READ)
    return str(row[0])


def where(location: str) -> str:
    """A store's location as messages may show it: a PostgreSQL DSN without its password."""
    if location.startswith(("postgresql://", "postgres://")):
        scheme, _, rest = location.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    return str(Path(location).resolve()) if location != ":memory:" else location


def switch_to_wal(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch an SQLite file to WAL (a pool of processes shares it). Several processes starting
    on a new file at once race for it, and that lock is not one SQLite's busy timeout waits for:
    retry for a while. The worker's store uses this too."""
    deadline = time.monotonic() + timeout
    while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class BlobError(RuntimeError):
    """The blob store could not be opened, read or written (down, locked past its timeout, full):
    the large job it was meant for was not queued."""


def ref_for(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_ref(ref: str) -> str:
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ValueError(f"not a blob reference: {ref!r} (want 'sha256:<64 hex digits>')")
    return ref


class BlobStore:
    """Thread-safe: one connection, used under a lock (a web process shares one Notifier)."""

    def __init__(self, location: str = DEFAULT_LOCATION, timeout: float = 30.0) -> None:
        self.location = location
        self.timeout = timeout
        self.postgres = location.startswith(("postgresql://", "postgres://"))
        self._lock = threading.Lock()
        self._db: Any = None
        with self._lock:
            self._connect()

    # -- the two engines --------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            if self.postgres:
                self._db = self._connect_postgres()
            else:
                self._db = self._connect_sqlite()
        except BlobError:
            raise
        except Exception as exc:  # noqa: BLE001 - any driver error: the store is unusable
            self._db = None
            raise BlobError(f"blob store {self._where()} cannot be opened: {exc}") from exc

    def _connect_sqlite(self) -> sqlite3.Connection:
        if self.location != ":memory:":
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.location, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            switch_to_wal(db, self.timeout)  # the worker's pool opens the same file
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_TABLE.format(blob="BLOB"))
        except Exception:
            db.close()
            raise
        return db

    def _connect_postgres(self) -> Any:
        import psycopg  # only a PostgreSQL location needs it

        db = psycopg.connect(self.location, autocommit=True, connect_timeout=max(1, int(self.timeout)))
        try:
            try:
                db.execute(_TABLE.format(blob="BYTEA"))
            except psycopg.errors.UniqueViolation:
                pass  # another process created it at the same instant (IF NOT EXISTS is not atomic)
        except Exception:
            db.close()
            raise
        return db

    def _where(self) -> str:
        return where(self.location)  # no password in a message

    def _execute(self, sql: str, args: Sequence[Any]) -> Any:
        """Run one statement; a dropped PostgreSQL connection is reopened once."""
        for attempt in (1, 2):
            if self._db is None:
                self._connect()
            try:
                if self.postgres:
                    return self._db.execute(sql.replace("?", "%s"), args)
                return self._db.execute(sql, args)
            except Exception as exc:  # noqa: BLE001 - classified below
                broken = self.postgres and getattr(self._db, "closed", False)
                if broken and attempt == 1:
                    self._db = None
                    continue
                raise BlobError(f"blob store {self._where()} failed: {exc}") from exc
        raise AssertionError("unreachable")

    # -- the interface ----------------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        ref = ref_for(data)
        with self._lock:
            self._execute(PUT, (ref, bytes(data), time.time()))
        return ref

    def get(self, ref: str) -> bytes | None:
        with self._lock:
            row = self._execute("SELECT data FROM blobs WHERE id = ?", (_check_ref(ref),)).fetchone()
        return None if row is None else bytes(row[0])

    def delete(self, ref: str) -> None:
        with self._lock:
            self._execute("DELETE FROM blobs WHERE id = ?", (_check_ref(ref),))

    def identity(self) -> str:
        """The store's name for itself (made by whichever process asks first; the same for every
        process that opens this store), which a blob reference carries: a worker reading another
        store can then say so instead of calling the blob gone."""
        if getattr(self, "_identity", None) is None:
            with self._lock:
                self._execute(IDENTITY_TABLE, ())
                self._identity = read_or_make_identity(lambda sql: self._execute(sql, ()).fetchone(), self._execute)
        return self._identity

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self) -> "BlobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
