"""One connection to the store's engine, kept usable: opened, guarded (an engine's own errors
become ``StoreUnavailable``), given transactions, and made again when it goes away (a SQLite
file deleted or replaced under the worker, a PostgreSQL server restarted).

Each class speaks its ``Dialect``; neither knows a table. ``execute_returning_many`` is how a
batch of one statement goes in as few round trips as the engine allows: PostgreSQL pipelines it
(psycopg's ``executemany``), SQLite runs it in-process one row after the other.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from producer.blobs import switch_to_wal

from ..logs import get_logger
from .dialect import POSTGRES, SQLITE, Dialect
from .errors import StoreCorrupt, StoreUnavailable


class Connection(Protocol):
    dialect: Dialect

    def check(self) -> bool: ...
    def guard(self) -> contextlib.AbstractContextManager[None]: ...
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any: ...
    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def execute_returning_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]: ...
    def legacy_version(self) -> int: ...
    def close(self) -> None: ...


def sqlite_unavailable(exc: sqlite3.Error) -> bool:
    """Errors of the store, not of our SQL: locked, disk full, I/O error, read-only, damaged."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class SqliteConnection:
    dialect = SQLITE

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
            if sqlite_unavailable(exc) and "not a database" not in str(exc) and "malformed" not in str(exc):
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
            if not sqlite_unavailable(exc):
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

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def execute_returning_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        # sqlite3's executemany returns no rows; in-process, a statement a row costs no round trip
        return [self.db.execute(sql, args).fetchone() for args in rows]

    def legacy_version(self) -> int:
        """The schema version of a store from before the migrations table (1 to 3)."""
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class PostgresConnection:
    dialect = POSTGRES

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
        return self.db.execute(self.dialect.sql(sql), args)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for many rows in one round trip (psycopg pipelines ``executemany``)."""
        with self.db.cursor() as cur:
            cur.executemany(self.dialect.sql(sql), rows)

    def execute_returning_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The first row each execution returned (None where it returned none), pipelined."""
        if not rows:
            return []
        out: list[Any] = []
        with self.db.cursor() as cur:
            cur.executemany(self.dialect.sql(sql), rows, returning=True)
            while True:
                out.append(cur.fetchone())
                if not cur.nextset():
                    break
        return out

    def legacy_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS beanmail_schema (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM beanmail_schema").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def connect_to(location: str, timeout: float) -> Connection:
    """An SQLite file, or a ``postgresql://`` DSN for a fleet of worker hosts."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresConnection(location, timeout)
    return SqliteConnection(location, timeout)
