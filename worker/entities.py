"""Entity references resolved at send time, so a mail shows the data as it is now, or is
skipped when the entity is gone.

A job says ``"entities": {"user": {"type": "user", "id": 42}}``; the resolver registered for
type ``user`` loads it and the template sees ``user``. Resolvers come from settings:

    [beanmail.entities.user]
    database = "app.sqlite3"                       # an SQL resolver over sqlite3
    sql = "SELECT id, name, email FROM users WHERE id = ?"

    [beanmail.entities.issue]
    callable = "myapp.mail:load_issue"             # any function id -> mapping or None
"""

from __future__ import annotations

import importlib
import sqlite3
from typing import Any, Callable, Mapping, Protocol

from .outcomes import Deferred, Poison, Skipped


class Resolver(Protocol):
    def __call__(self, entity_id: Any) -> Mapping[str, Any] | None: ...


class EntityUnavailable(Exception):
    """A resolver raises this (or ConnectionError/OSError) when its store cannot be reached."""


class SqliteResolver:
    def __init__(self, database: str, sql: str) -> None:
        self.database = database
        self.sql = sql
        self._conn: sqlite3.Connection | None = None

    def __call__(self, entity_id: Any) -> Mapping[str, Any] | None:
        try:
            if self._conn is None:
                # mode=ro: a missing database file is "unavailable", never silently created empty
                self._conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
                self._conn.row_factory = sqlite3.Row
            row = self._conn.execute(self.sql, (entity_id,)).fetchone()
        except sqlite3.OperationalError as exc:
            self._conn = None
            raise EntityUnavailable(f"sqlite {self.database}: {exc}") from exc
        return dict(row) if row is not None else None


def load_callable(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"callable {spec!r} must be 'module:function'")
    return getattr(importlib.import_module(module), name)


class Registry:
    def __init__(self, resolvers: Mapping[str, Resolver] | None = None) -> None:
        self._resolvers: dict[str, Resolver] = dict(resolvers or {})

    @classmethod
    def from_settings(cls, config: Mapping[str, Mapping[str, Any]]) -> "Registry":
        from .settings import SettingsError

        resolvers: dict[str, Resolver] = {}
        for type_, spec in config.items():
            try:
                if "callable" in spec:
                    resolvers[type_] = load_callable(spec["callable"])
                else:
                    resolvers[type_] = SqliteResolver(spec["database"], spec["sql"])
            except (KeyError, ValueError, ImportError, AttributeError) as exc:
                raise SettingsError(f"entities.{type_}: {exc!r}") from None
        return cls(resolvers)

    def register(self, type_: str, resolver: Resolver) -> None:
        self._resolvers[type_] = resolver

    def resolve(self, entities: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        for name, ref in entities.items():
            type_, entity_id = ref["type"], ref["id"]
            resolver = self._resolvers.get(type_)
            if resolver is None:
                raise Poison(f"no resolver for entity type {type_!r}")
            try:
                value = resolver(entity_id)
            except (EntityUnavailable, ConnectionError, OSError) as exc:
                raise Deferred(f"entity store unavailable for {type_} {entity_id}: {exc}") from exc
            if value is None:
                raise Skipped(f"entity gone: {type_} {entity_id}")
            resolved[name] = value
        return resolved
