"""Entity references resolved at send time, so a mail shows the data as it is now, is skipped
when the entity is gone, and is skipped when its recipient may no longer see it.

A job says ``"entities": {"issue": {"type": "issue", "id": 42}}``; the resolver registered for
type ``issue`` loads it and the template sees ``issue``. Resolvers come from settings:

    [beanmail.entities.issue]
    database = "app.sqlite3"                  # sqlite3 file, postgresql://… or mysql://… (read-only sessions)
    sql = "SELECT id, title FROM issues WHERE id = :id"
    access = "SELECT 1 FROM watchers WHERE issue_id = :id AND email = :recipient"   # optional

    [beanmail.entities.user]
    callable = "myapp.mail:load_user"         # f(id) or f(id, recipient) -> mapping or None

``sql`` may name ``:id`` and ``:recipient`` (on SQLite, one ``?`` for the id too). A MySQL or
MariaDB database is ``mysql://user:password@host:port/db`` (``?unix_socket=/path`` for a socket),
read through PyMySQL (``pip install beanmail[mysql]``), its sessions set ``TRANSACTION READ ONLY``. An access check that
finds no row, a ``sql`` naming ``:recipient`` that finds none, or a callable raising
``NotVisible`` skips the delivery with the reason "not visible" (recorded, never retried): the
worker has no user session, so access is checked here, per recipient, when the mail goes.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sqlite3
import threading
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from .logs import mask
from .outcomes import Deferred, Poison, Skipped


class Resolver(Protocol):
    def __call__(self, entity_id: Any, recipient: str | None = None) -> Mapping[str, Any] | None: ...


class EntityUnavailable(Exception):
    """A resolver raises this (or ConnectionError/OSError) when its store cannot be reached."""


class NotVisible(Exception):
    """A resolver raises this when the entity exists but the recipient may not see it."""


_NAMED = re.compile(r"(?<![:\w]):(id|recipient)\b")


class SqlResolver:
    """``sql`` (and an optional ``access`` check) over an SQLite file, a PostgreSQL or a MySQL/MariaDB
    database, on read-only connections, one per thread (each worker thread keeps its own, reopened after an
    error)."""

    def __init__(self, database: str, sql: str, access: str = "") -> None:
        self.database = database
        self.sql = sql
        self.access = access
        self.postgres = database.startswith(("postgresql://", "postgres://"))
        self.mysql = database.startswith(("mysql://", "mariadb://"))
        if self.mysql:
            mysql_options(database)  # a malformed URL is a settings error now, not at the first job
        self.by_recipient = ":recipient" in sql
        self._local = threading.local()

    def __call__(self, entity_id: Any, recipient: str | None = None) -> Mapping[str, Any] | None:
        params = {"id": entity_id, "recipient": (recipient or "").lower()}
        try:
            row = self._one(self.sql, params)
            if row is None:
                if self.by_recipient:
                    raise NotVisible("no row for this recipient")
                return None
            if self.access and self._one(self.access, params) is None:
                raise NotVisible("the access check found no row")
            return row
        except NotVisible:
            raise
        except Exception as exc:
            if not self._is_outage(exc):
                raise
            self._local.conn = None
            raise EntityUnavailable(f"{self._engine()} {self._where()}: {exc}") from exc

    def _one(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        conn = getattr(self._local, "conn", None) or self._connect()
        if self.postgres or self.mysql:
            with conn.cursor() as cur:
                cur.execute(_NAMED.sub(r"%(\1)s", sql.replace("%", "%%")), params)
                row = cur.fetchone()
                return dict(zip([c[0] for c in cur.description], row)) if row is not None else None
        args: Any = params if _NAMED.search(sql) else (params["id"],)
        found = conn.execute(sql, args).fetchone()
        return dict(found) if found is not None else None

    def _connect(self) -> Any:
        if self.postgres:
            import psycopg

            # a resolver reads: its sessions cannot write, whatever its SQL says
            conn = psycopg.connect(self.database, autocommit=True, connect_timeout=5,
                                   options="-c default_transaction_read_only=on")
        elif self.mysql:
            import pymysql

            conn = pymysql.connect(**mysql_options(self.database), autocommit=True, connect_timeout=5,
                                   read_timeout=30, charset="utf8mb4")
            with conn.cursor() as cur:  # every statement of this session: a read-only transaction
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        else:
            # mode=ro: a missing database file is "unavailable", never silently created empty
            conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5, check_same_thread=False)
            conn.row_factory = sqlite3.Row
        self._local.conn = conn
        return conn

    def _is_outage(self, exc: Exception) -> bool:
        if isinstance(exc, (sqlite3.OperationalError, OSError, ConnectionError)):
            return True
        if self.postgres:
            import psycopg

            return isinstance(exc, psycopg.OperationalError)
        if self.mysql:
            import pymysql

            if isinstance(exc, pymysql.err.InterfaceError):
                return True
            code = exc.args[0] if isinstance(exc, pymysql.err.OperationalError) and exc.args else None
            return isinstance(code, int) and (code >= 2000 or code in _MYSQL_OUTAGES)
        return False

    def _engine(self) -> str:
        return "postgresql" if self.postgres else "mysql" if self.mysql else "sqlite"

    def _where(self) -> str:
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", self.database)


# server errors that mean "not reachable now" (client errors, 2000 and up, all do): too many
# connections, access denied, unknown database, server shutting down, lock wait timeout, deadlock,
# connection killed (as PostgreSQL's OperationalError: the store is not there for us now).
# Others (a write refused by the read-only session, bad SQL) are bugs, not outages.
_MYSQL_OUTAGES = {1040, 1044, 1045, 1049, 1053, 1205, 1213, 1927}


def mysql_options(url: str) -> dict[str, Any]:
    """``mysql://user:password@host:port/database?unix_socket=/path`` -> PyMySQL's arguments."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if set(query) - {"unix_socket"} or not parts.path.strip("/"):
        shown = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
        raise ValueError(f"a MySQL database is mysql://user:password@host:port/database[?unix_socket=/path],"
                         f" got {shown!r}")
    options: dict[str, Any] = {"user": unquote(parts.username or "root"), "password": unquote(parts.password or ""),
                               "database": unquote(parts.path.strip("/"))}
    if "unix_socket" in query:
        options["unix_socket"] = query["unix_socket"]
    else:
        options["host"], options["port"] = parts.hostname or "127.0.0.1", parts.port or 3306
    return options


SqliteResolver = SqlResolver  # its older name


def load_callable(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"callable {spec!r} must be 'module:function'")
    return getattr(importlib.import_module(module), name)


def _takes_recipient(resolver: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(resolver).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class Registry:
    def __init__(self, resolvers: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._resolvers: dict[str, Callable[..., Any]] = {}
        self._with_recipient: dict[str, bool] = {}
        for type_, resolver in (resolvers or {}).items():
            self.register(type_, resolver)

    @classmethod
    def from_settings(cls, config: Mapping[str, Mapping[str, Any]]) -> "Registry":
        from .settings import SettingsError

        resolvers: dict[str, Callable[..., Any]] = {}
        for type_, spec in config.items():
            try:
                if "callable" in spec:
                    resolvers[type_] = load_callable(spec["callable"])
                else:
                    resolvers[type_] = SqlResolver(spec["database"], spec["sql"], spec.get("access", ""))
            except (KeyError, ValueError, ImportError, AttributeError) as exc:
                raise SettingsError(f"entities.{type_}: {exc!r}") from None
        return cls(resolvers)

    def register(self, type_: str, resolver: Callable[..., Any]) -> None:
        self._resolvers[type_] = resolver
        self._with_recipient[type_] = _takes_recipient(resolver)

    def resolve(self, entities: Mapping[str, Mapping[str, Any]], recipient: str | None = None) -> dict[str, Any]:
        """Every entity of a job as its recipient may see it now. Skipped when one is gone or not
        visible to ``recipient``, Deferred when a resolver's store is down."""
        resolved: dict[str, Any] = {}
        for name, ref in entities.items():
            type_, entity_id = ref["type"], ref["id"]
            resolver = self._resolvers.get(type_)
            if resolver is None:
                raise Poison(f"no resolver for entity type {type_!r}")
            try:
                value = resolver(entity_id, recipient) if self._with_recipient[type_] else resolver(entity_id)
            except NotVisible as exc:
                who = mask(recipient) if recipient else "this recipient"
                raise Skipped(f"not visible to {who}: {type_} {entity_id} ({exc})") from None
            except (EntityUnavailable, ConnectionError, OSError) as exc:
                raise Deferred(f"entity store unavailable for {type_} {entity_id}: {exc}") from exc
            if value is None:
                raise Skipped(f"entity gone: {type_} {entity_id}")
            resolved[name] = value
        return resolved
