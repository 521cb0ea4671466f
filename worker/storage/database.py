"""The database layer every owner writes through: one connection, its dialect, the outage
bookkeeping, transactions, and the migrations runner.

Every store error is an outage (``StoreUnavailable``), logged once when it starts and once when
it ends. A transaction opened inside another (an owner's public method called by another owner
within its transaction) joins the outer one, so owners compose without sharing private names.
Migrations are numbered; each owner module keeps its own (``schema.py`` gathers them) and the
runner applies every number not yet applied, once, in order.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from ..logs import get_logger
from .connections import Connection, connect_to
from .dialect import Dialect
from .errors import StoreCorrupt, StoreUnavailable
from .values import chunks

MIGRATION_LOCK = 716235  # one migrating host at a time (PostgreSQL)


def safe_location(location: str) -> str:
    """A DSN without its password, for logs."""
    parts = urlsplit(location)
    if parts.password:
        return location.replace(f":{parts.password}@", ":***@", 1)
    return location


class Database:
    def __init__(self, location: str, timeout: float, migrations: Mapping[int, str]) -> None:
        """``timeout``: how long a write waits for another process's lock. Raises
        StoreUnavailable (cannot reach or create it) or StoreCorrupt."""
        self.location = location
        self.migrations = migrations
        self._conn: Connection = connect_to(location, timeout)
        self.dialect: Dialect = self._conn.dialect
        self._outage_since: float | None = None
        self._local = threading.local()  # this thread's open transaction, if any
        self.migrate()

    # -- migrations -----------------------------------------------------------------------------
    def migrate(self) -> None:
        try:
            with self._conn.transaction():
                turn = self.dialect.turn(MIGRATION_LOCK)
                if turn is not None:
                    self._conn.execute(*turn)
                for v in sorted(set(self.migrations) - self._applied()):
                    for statement in self.migrations[v].format(blob=self.dialect.blob_type).split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute("INSERT INTO beanmail_migrations (version, applied_at) VALUES (?, ?)",
                                       (v, time.time()))
        except sqlite3.DatabaseError as exc:  # guard let it through: not an outage, a wrong file
            raise StoreCorrupt(f"{self.location} is not a usable beanmail store: {exc}") from exc

    def _applied(self) -> set[int]:
        """Migrations are applied by number, each once, in order; numbers may leave gaps, so
        separate owners can keep separate ranges."""
        db = self._conn
        db.execute("CREATE TABLE IF NOT EXISTS beanmail_migrations"
                   " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        applied = {int(r[0]) for r in db.execute("SELECT version FROM beanmail_migrations").fetchall()}
        if not applied:  # a store from before this table knew only 1..its version
            for v in range(1, db.legacy_version() + 1):
                db.execute("INSERT INTO beanmail_migrations (version, applied_at) VALUES (?, ?)", (v, time.time()))
                applied.add(v)
        return applied

    def schema(self) -> set[int]:
        """The migration numbers this store has applied."""
        return {int(r[0]) for r in self.all("SELECT version FROM beanmail_migrations")}

    # -- outages and transactions ---------------------------------------------------------------
    @property
    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Every store error is an outage, logged once when it starts and once when it ends.
        Inside a transaction the transaction's own guard answers for it."""
        if self._depth:
            yield
            return
        try:
            if self._conn.check():
                self.migrate()
            with self._conn.guard():
                yield
        except StoreUnavailable as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                get_logger().error("store unavailable; jobs are deferred until it is back",
                                   store=safe_location(self.location), error=exc.reason)
            raise
        if self._outage_since is not None:
            get_logger().warning("store available again", store=safe_location(self.location),
                                 outage_s=round(time.monotonic() - self._outage_since, 1))
            self._outage_since = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; opened inside another, it is part of the outer one."""
        if self._depth:
            yield
            return
        with self.guard(), self._conn.transaction():
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0

    def turn(self, resource: int | str) -> None:
        """Within a transaction: wait for other writers of ``resource`` (Dialect.turn)."""
        statement = self.dialect.turn(resource)
        if statement is not None:
            self._conn.execute(*statement)

    def check(self) -> None:
        """Notice a store file deleted (restored) or replaced (reopened) without a statement."""
        with self.guard():
            pass

    # -- statements (written with ``?``; the connection spells them in its dialect) -------------
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The cursor of one statement; for use inside ``transaction()``."""
        if self._depth:  # the transaction's guard answers for it (and no guard costs nothing)
            return self._conn.execute(sql, args)
        with self.guard():
            return self._conn.execute(sql, args)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each of ``rows``, batched as the engine allows."""
        if rows:
            with self.guard():
                self._conn.execute_many(sql, rows)

    def execute_returning_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The first returned row (or None) of one statement run for each of ``rows``, batched."""
        with self.guard():
            return self._conn.execute_returning_many(sql, rows)

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self.guard():
            return self._conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.guard():
            return self._conn.execute(sql, args).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """A write; the number of rows it changed."""
        return int(self.execute(sql, args).rowcount)

    def all_in(self, sql: str, values: Iterable[Any]) -> list[Any]:
        """The rows of ``sql`` whose ``IN ({marks})`` takes ``values``, in as many queries as the
        database's limit on parameters needs."""
        rows = []
        for part in chunks(sorted(set(values))):
            rows += self.all(sql.format(marks=", ".join("?" * len(part))), part)
        return rows

    def close(self) -> None:
        self._conn.close()
