"""Access checked at send time: a resolver may take the recipient and say the entity is not
visible to them, on SQLite, PostgreSQL and MariaDB (read-only sessions) and in Python."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from worker.entities import NotVisible, Registry
from worker.outcomes import Deferred, Poison, Skipped

from producer import Notifier
from worker.settings import Settings

from .servers import MariaDB, Postgres, SmtpServer

SCHEMA = [
    "CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT, private INTEGER)",
    "CREATE TABLE watchers (issue_id INTEGER, email TEXT)",
    "INSERT INTO issues VALUES (1, 'Public', 0), (2, 'Private', 1)",
    "INSERT INTO watchers VALUES (2, 'ana@example.com')",
]
ACCESS = ("SELECT 1 FROM issues i WHERE i.id = :id AND (i.private = 0 OR EXISTS"
          " (SELECT 1 FROM watchers w WHERE w.issue_id = i.id AND w.email = :recipient))")


def sqlite_db(tmp_path: Path) -> str:
    path = str(tmp_path / "app.sqlite3")
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
    return path


def issue(database: str, **extra: str) -> Registry:
    return Registry.from_settings({"issue": {"database": database, "sql": "SELECT id, title FROM issues WHERE id = :id",
                                             "access": ACCESS, **extra}})


def check_access(registry: Registry, revoke: "callable") -> None:  # type: ignore[valid-type]
    ref = {"issue": {"type": "issue", "id": 2}}
    assert registry.resolve(ref, "ana@example.com") == {"issue": {"id": 2, "title": "Private"}}
    assert registry.resolve({"issue": {"type": "issue", "id": 1}}, "bo@example.com")["issue"]["title"] == "Public"
    with pytest.raises(Skipped, match=r"not visible to b\*\*\*@example.com: issue 2"):
        registry.resolve(ref, "bo@example.com")
    revoke()  # ana is removed from the private issue after the mail was queued
    with pytest.raises(Skipped, match=r"not visible to a\*\*\*@example.com: issue 2"):
        registry.resolve(ref, "ana@example.com")
    with pytest.raises(Skipped, match="entity gone: issue 9"):
        registry.resolve({"issue": {"type": "issue", "id": 9}}, "ana@example.com")


def test_sqlite_access_is_checked_per_recipient_at_send_time(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path)

    def revoke() -> None:
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM watchers")
    check_access(issue(path), revoke)


def test_postgresql_access_is_checked_on_read_only_sessions(postgres: Postgres) -> None:
    import psycopg

    dsn = postgres.create_database(f"app{time.monotonic_ns()}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)

    def revoke() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM watchers")
    check_access(issue(dsn), revoke)
    writer = Registry.from_settings({"issue": {"database": dsn,
                                               "sql": "INSERT INTO issues VALUES (:id, 'x', 0) RETURNING id, title"}})
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        writer.resolve({"issue": {"type": "issue", "id": 5}}, "ana@example.com")
    gone = Registry.from_settings({"issue": {"database": dsn.replace(dsn.rsplit("/", 1)[1], "nosuchdb"),
                                             "sql": "SELECT 1 AS one WHERE :id = 1"}})
    with pytest.raises(Deferred, match="entity store unavailable"):
        gone.resolve({"issue": {"type": "issue", "id": 1}}, "ana@example.com")


def test_mysql_access_is_checked_on_read_only_pooled_sessions(mariadb: MariaDB) -> None:
    """The same rules against a real MariaDB server through PyMySQL: one read-only session per
    thread, reused; a write refused; a database that is not there is an outage (deferred)."""
    import threading

    import pymysql

    name = f"app{time.monotonic_ns()}"
    dsn = mariadb.create_database(name, [s.replace("TEXT", "VARCHAR(200)") for s in SCHEMA])
    check_access(issue(dsn), lambda: mariadb.execute(name, "DELETE FROM watchers"))

    mariadb.execute(name, "INSERT INTO watchers VALUES (2, 'ana@example.com')")
    registry = issue(dsn)
    sessions: set[int] = set()

    def session_ids() -> None:
        for _ in range(3):
            registry.resolve({"issue": {"type": "issue", "id": 2}}, "ana@example.com")
            resolver = registry._resolvers["issue"]
            sessions.add(resolver._one("SELECT CONNECTION_ID() AS s", {"id": 0, "recipient": ""})["s"])
    threads = [threading.Thread(target=session_ids) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(sessions) == 2  # one session per thread, each kept for its three look-ups

    writer = Registry.from_settings({"issue": {"database": dsn, "sql": "INSERT INTO issues VALUES (:id, 'x', 0)"}})
    with pytest.raises(pymysql.err.OperationalError, match="READ ONLY"):
        writer.resolve({"issue": {"type": "issue", "id": 5}}, "ana@example.com")
    gone = Registry.from_settings({"issue": {"database": mariadb.dsn("nosuchdb"), "sql": "SELECT 1 AS one"}})
    with pytest.raises(Deferred, match="entity store unavailable for issue 1: mysql mysql://root@127.0.0.1"):
        gone.resolve({"issue": {"type": "issue", "id": 1}}, "ana@example.com")
    from worker.settings import SettingsError

    with pytest.raises(SettingsError, match="mysql://user:password@host:port/database"):
        Registry.from_settings({"issue": {"database": "mysql://ro:secret@127.0.0.1/", "sql": "SELECT 1"}})


def test_a_callable_may_take_the_recipient_and_say_not_visible() -> None:
    members = {"ana@example.com"}

    def group_post(post_id: int, recipient: str | None) -> dict | None:
        if recipient not in members:
            raise NotVisible("not a member of the group")
        return {"id": post_id}

    registry = Registry({"post": group_post, "user": lambda user_id: {"id": user_id}})
    ref = {"post": {"type": "post", "id": 3}, "author": {"type": "user", "id": 8}}
    assert registry.resolve(ref, "ana@example.com") == {"post": {"id": 3}, "author": {"id": 8}}
    members.clear()
    with pytest.raises(Skipped, match=r"not visible to a\*\*\*@example.com: post 3 \(not a member of the group\)"):
        registry.resolve(ref, "ana@example.com")
    with pytest.raises(Poison):
        registry.resolve({"x": {"type": "nobody", "id": 1}}, "ana@example.com")


def test_sql_naming_the_recipient_finds_no_row_for_who_may_not_see(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path)
    registry = Registry.from_settings({"issue": {"database": path, "sql": (
        "SELECT i.id, i.title FROM issues i JOIN watchers w ON w.issue_id = i.id"
        " WHERE i.id = :id AND w.email = :recipient")}})
    assert registry.resolve({"i": {"type": "issue", "id": 2}}, "ANA@example.com")["i"]["title"] == "Private"
    with pytest.raises(Skipped, match="not visible"):
        registry.resolve({"i": {"type": "issue", "id": 2}}, "bo@example.com")


def test_a_watcher_removed_after_the_mail_was_queued_gets_nothing(settings: Settings, notifier: Notifier,
                                                                   smtp: SmtpServer, tmp_path: Path) -> None:
    """The Elgg case end to end: a comment on a private issue queued for two watchers; one is
    removed from the issue before the worker sends; only the other gets the mail."""
    from worker.store import Store

    from .conftest import run_burst
    from .test_mailout import run_fanout

    path = sqlite_db(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO watchers VALUES (2, 'bo@example.com')")
    mx = settings.replace(entities={"issue": {"database": path, "sql": "SELECT id, title FROM issues WHERE id = :id",
                                              "access": ACCESS}})
    notifier.mailout("comment", ["ana@example.com", "bo@example.com"],
                     {"comment": {"author": "Cy", "body": "Fixed."}}, key="comment:1",
                     priority="normal", entities={"issue": {"type": "issue", "id": 2}})
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM watchers WHERE email = 'ana@example.com'")
    run_fanout(mx)
    run_burst(mx)
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [["bo@example.com"]]
    store = Store(mx.store)
    [ana] = store.deliveries(recipient="ana@example.com")
    store.close()
    assert ana.outcome == "skipped" and ana.reason.startswith("not visible to a***@example.com: issue 2")


def test_the_example_trackers_private_issue_mails_no_watcher_removed_after_the_comment(
        settings: Settings, smtp: SmtpServer, tmp_path: Path) -> None:
    """examples/tracker: Bob comments on private issue #3 (Ann and Cat watch it); Cat is removed
    from the issue before the worker sends; Ann gets the comment, Cat nothing. A public issue's
    comment still reaches every watcher (its jobs carry no entity to check)."""
    from examples.tracker.app import Tracker, entities
    from worker.store import Store

    from .conftest import run_burst
    from .test_mailout import run_fanout

    db = str(tmp_path / "tracker.sqlite3")
    notifier = Notifier(settings.beanstalk_url)
    app = Tracker(db, notifier)
    workers = settings.replace(entities=entities(db))
    app.comment(3, "bob@example.com", "Rotated the keys.")
    app.unwatch(3, "cat@example.com")
    app.comment(1, "bob@example.com", "Fixed.")
    run_fanout(workers)
    run_burst(workers)
    got = sorted((m.rcpt_tos[0], m.message["Subject"]) for m in smtp.wait_for(3))
    assert [(to, subject.split(":")[0]) for to, subject in got] == [
        ("ann@example.com", "[#1] Login fails with a ü in the password"),
        ("ann@example.com", "[#3] Session tokens in the access log"),
        ("cat@example.com", "[#1] Login fails with a ü in the password")]
    store = Store(settings.store)
    [cat] = [d for d in store.deliveries(recipient="cat@example.com") if d.key.startswith("comment:1:")]
    store.close()
    assert cat.outcome == "skipped" and cat.reason.startswith("not visible to c***@example.com: issue 3")
    notifier.close()
