"""The store's database layer on its own (worker/storage/database.py, dialect.py): owners
compose inside one transaction, and each engine is spoken in its own dialect."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.storage.database import Database
from worker.storage.dialect import POSTGRES, SQLITE, dialect_for

pytestmark = pytest.mark.unit

TABLE = {1: "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"}


def test_a_transaction_opened_inside_another_commits_or_rolls_back_with_it(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "s.sqlite3"), 5, TABLE)
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("outer", 1))
            with db.transaction():  # another owner's method, called within: the same transaction
                db.run("INSERT INTO t (k, v) VALUES (?, ?)", ("inner", 2))
            raise RuntimeError("the outer one fails")
    assert db.all("SELECT k FROM t") == []
    with db.transaction():
        db.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("outer", 1))
        with db.transaction():
            db.run("INSERT INTO t (k, v) VALUES (?, ?)", ("inner", 2))
    assert sorted(r[0] for r in db.all("SELECT k FROM t")) == ["inner", "outer"]
    assert db.schema() == {1}


def test_each_engine_is_spoken_in_its_dialect() -> None:
    assert dialect_for("postgresql://u@h/db") is POSTGRES and dialect_for("/var/s.sqlite3") is SQLITE
    assert POSTGRES.sql("SELECT ? WHERE k = ?") == "SELECT %s WHERE k = %s"
    assert SQLITE.sql("SELECT ?") == "SELECT ?"
    assert SQLITE.turn("mx_slots:x") is None  # BEGIN IMMEDIATE already excludes other writers
    assert POSTGRES.turn(716230) == ("SELECT pg_advisory_xact_lock(716230)", ())
    assert POSTGRES.turn("mx_slots:x") == ("SELECT pg_advisory_xact_lock(hashtext(?))", ("mx_slots:x",))
