"""What differs between SQLite and PostgreSQL, in one object the rest of the store asks.

The SQL is written once, in the dialect both engines understand: ``ON CONFLICT ... DO UPDATE``
upserts, ``RETURNING``, ``excluded.``, window functions, ``DOUBLE PRECISION`` timestamps taken
from Python's clock (so "now" is the worker's, on either engine). What is left differs, and is
here: how a parameter is spelled, how a read locks its row, the type of bytes, and how writers
of one resource take turns (SQLite's ``BEGIN IMMEDIATE`` already serializes every writer;
PostgreSQL takes a transaction-scoped advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str               # sqlite | postgresql
    placeholder: str        # how a parameter is spelled; statements are written with ``?``
    for_update: str         # appended to a SELECT that reads a row it will change
    blob_type: str          # the column type of bytes (migrations spell it ``{blob}``)
    advisory_locks: bool    # False: a write transaction already excludes every other writer

    def sql(self, statement: str) -> str:
        """``statement`` (written with ``?``) in this engine's parameter style."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def turn(self, resource: int | str) -> tuple[str, tuple[Any, ...]] | None:
        """The statement that makes writers of ``resource`` (a lock number, or a name hashed to
        one) take turns until the transaction ends; None where a transaction does that already."""
        if not self.advisory_locks:
            return None
        if isinstance(resource, int):
            return f"SELECT pg_advisory_xact_lock({int(resource)})", ()
        return "SELECT pg_advisory_xact_lock(hashtext(?))", (resource,)


SQLITE = Dialect(name="sqlite", placeholder="?", for_update="", blob_type="BLOB", advisory_locks=False)
POSTGRES = Dialect(name="postgresql", placeholder="%s", for_update=" FOR UPDATE", blob_type="BYTEA",
                   advisory_locks=True)


def dialect_for(location: str) -> Dialect:
    """A ``postgresql://`` DSN speaks PostgreSQL; anything else is an SQLite file."""
    return POSTGRES if location.startswith(("postgresql://", "postgres://")) else SQLITE
