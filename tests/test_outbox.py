"""The transactional outbox: a commit never loses its mail. Jobs are rows of the application's own
database written in its transaction; `beanmail outbox run` moves them to beanstalkd. Real SQLite
files and PostgreSQL, a real beanstalkd, the real relay command, a real worker, SMTP capture; the
outside trial (a Django process SIGKILLed at random moments) as the acceptance test."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from producer import Notifier
from producer import envelope as env
from producer import outbox
from producer.client import connect
from producer.hooks import transaction
from worker.settings import Settings

from .conftest import ROOT, VENV_BIN, bare_env, beanmail, queued, run_burst
from .servers import Beanstalkd, Postgres, SmtpServer, wait_until

KILLS = int(os.environ.get("BEANMAIL_OUTBOX_KILLS", "8"))  # the outside trial had 40: set this to measure it
SITE = ROOT / "tests" / "outbox_site"


def sqlite_db(tmp_path: Path, name: str = "app.sqlite3") -> tuple[str, str]:
    """A new application database with the outbox table: (path, relay URL)."""
    path = str(tmp_path / name)
    conn = sqlite3.connect(path)
    outbox.create_table(conn, "sqlite")
    conn.execute("CREATE TABLE comments (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    return path, f"sqlite://{path}"


def rows(conn: Any) -> list[tuple[int, str]]:
    return outbox.pending(conn)




class RelayProcess:
    """`beanmail outbox run --db URL` as supervisord runs it; its JSON log kept in a file."""

    def __init__(self, settings: Settings, db: str, log: Path, *extra: str) -> None:
        self.log_path = log
        self.proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "outbox", "run", "--db", db, *extra],
                                     env=bare_env(settings), cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def logged(self, text: str) -> int:
        return sum(text in e["event"] for e in self.events())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(10)


# -- the writer, no server -------------------------------------------------------------------------

def test_a_row_commits_with_the_transaction_and_rolls_back_with_it(tmp_path: Path) -> None:
    path, _ = sqlite_db(tmp_path)
    db = sqlite3.connect(path)
    notifier = Notifier("beanstalk://127.0.0.1:9", secret="s3cret")  # never dialled: the outbox has the job
    with transaction(db, notifier, outbox=True) as mail:
        db.execute("INSERT INTO comments (body) VALUES ('kept')")
        row_id = mail.notify("comment", "zoe@example.com", {"n": 1}, key="comment:1")
        mail.notify("comment", "sam@example.com", {"n": 1})  # no key given: one is made
    with pytest.raises(RuntimeError):
        with transaction(db, notifier, outbox=True) as mail:
            db.execute("INSERT INTO comments (body) VALUES ('gone')")
            mail.notify("comment", "ann@example.com", {"n": 2}, key="comment:2")
            raise RuntimeError("the request failed")
    got = db.execute("SELECT id, job_key, tube, pri, delay, ttr, body, error FROM beanmail_outbox ORDER BY id").fetchall()
    assert [r[1] for r in got][0] == "comment:1" and row_id == got[0][0] and len(got) == 2
    assert re.fullmatch(r"[0-9a-f]{32}", got[1][1])
    for _, key, tube, pri, delay, ttr, body, error in got:
        job = env.decode(body.encode(), "s3cret")  # the documented, signed envelope
        assert (job.id, tube, pri, delay, ttr, error) == (key, "mail.normal", 1024, 0, 120, None)
    assert db.execute("SELECT body FROM comments").fetchall() == [("kept",)]


def test_a_bad_database_url_or_no_table_is_said_plainly(tmp_path: Path) -> None:
    proc = beanmail("outbox", "status", "--db", "mysql://app@db/app", env=bare_env(), check=False)
    assert proc.returncode == 1 and "sqlite:///ABSOLUTE/PATH or postgresql://" in proc.stderr
    proc = beanmail("outbox", "status", "--db", f"sqlite://{tmp_path}/missing.sqlite3", env=bare_env(), check=False)
    assert proc.returncode == 69 and "database unreachable: unable to open database file" in proc.stderr
    assert not (tmp_path / "missing.sqlite3").exists()  # never a new empty database at a wrong path
    sqlite3.connect(tmp_path / "app.sqlite3").close()
    proc = beanmail("outbox", "status", "--db", f"sqlite://{tmp_path}/app.sqlite3", env=bare_env(), check=False)
    assert proc.returncode == 69 and "no such table: beanmail_outbox" in proc.stderr
    beanmail("outbox", "init", "--db", f"sqlite://{tmp_path}/app.sqlite3", env=bare_env())
    proc = beanmail("outbox", "status", "--db", f"sqlite://{tmp_path}/app.sqlite3", env=bare_env())
    assert proc.stdout.startswith("0 row(s) waiting; 0 kept with an error")


# -- the relay on SQLite -------------------------------------------------------------------------

def test_sqlite_relay_waits_out_beanstalkd_keeps_rows_it_can_never_put_and_the_rest_is_mailed_once(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path,
        relays: list[RelayProcess]) -> None:
    path, url = sqlite_db(tmp_path)
    db = sqlite3.connect(path)
    notifier = Notifier(settings.beanstalk_url, blobs="")
    with transaction(db, notifier, outbox=True) as mail:
        for n in range(3):
            mail.send_raw(f"Subject: order {n}\r\n\r\nthanks\r\n".encode(), [f"buyer{n}@example.com"],
                          sender="shop@beanmail.example", key=f"order:{n}")
    # what a PHP app might write by mistake: a tube beanstalkd refuses, a body over max-job-size
    db.execute("INSERT INTO beanmail_outbox (job_key, tube, pri, body) VALUES ('bad:1', 'no tube', 1024, '{}')")
    db.execute("INSERT INTO beanmail_outbox (job_key, tube, pri, body) VALUES ('big:1', 'mail.normal', 1024, ?)",
               ("x" * 70_000,))
    with transaction(db, notifier, outbox=True) as mail:
        mail.send_raw(b"Subject: order 3\r\n\r\nthanks\r\n", ["buyer3@example.com"], key="order:3")
    beanstalkd.stop()
    relays.append(relay := RelayProcess(settings, url, tmp_path / "relay.log"))
    wait_until(lambda: relay.logged("beanstalkd unreachable, outbox rows wait"), 20, "the relay to report the outage")
    assert len(rows(db)) == 6  # nothing dropped while beanstalkd is away
    beanstalkd.start()
    wait_until(lambda: [k for _, k in rows(db)] == ["bad:1", "big:1"], 20, "the relay to move the good rows")
    assert relay.logged("beanstalkd unreachable") == 1  # once per outage, not once per try
    assert relay.logged("beanstalkd answers again") == 1
    kept = {r[0]: r[1] for r in db.execute("SELECT job_key, error FROM beanmail_outbox")}
    assert "is not a beanstalkd tube name" in kept["bad:1"] and "max-job-size" in kept["big:1"]
    status = beanmail("outbox", "status", "--db", url, "--json", env=bare_env()).stdout
    assert json.loads(status)["pending"] == 0 and len(json.loads(status)["failed"]) == 2
    assert relay.stop() == 0
    run_burst(settings)
    got = collections.Counter(r for m in smtp.messages for r in m.rcpt_tos)
    assert got == {f"buyer{n}@example.com": 1 for n in range(4)}


# -- the relay on PostgreSQL ---------------------------------------------------------------------

def pg_db(postgres: Postgres) -> str:
    url = postgres.create_database(f"outbox{time.monotonic_ns()}")
    beanmail("outbox", "init", "--db", url, env=bare_env())
    return url


def test_postgresql_relay_wakes_on_notify_and_waits_out_a_missing_database(
        settings: Settings, beanstalkd: Beanstalkd, postgres: Postgres, tmp_path: Path,
        relays: list[RelayProcess]) -> None:
    import psycopg

    name = f"late{time.monotonic_ns()}"
    url = postgres.dsn(name)
    # --poll 60: without the NOTIFY the relay would not look again within the test's deadlines
    relays.append(relay := RelayProcess(settings, url, tmp_path / "relay.log", "--poll", "60"))
    wait_until(lambda: relay.logged("outbox database unreachable"), 20, "the relay to report the missing database")
    postgres.create_database(name)
    beanmail("outbox", "init", "--db", url, env=bare_env())
    wait_until(lambda: relay.logged("database answers again"), 20, "the relay to find the database")
    assert relay.logged("outbox database unreachable") == 1
    notifier = Notifier(settings.beanstalk_url)
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as reader:
        for n in range(3):
            with transaction(conn, notifier, outbox=True) as mail:
                mail.notify("welcome", f"user{n}@example.com", {"name": "Zoë"}, key=f"welcome:{n}")
        try:
            with transaction(conn, notifier, outbox=True) as mail:
                mail.notify("welcome", "rolled@example.com", key="welcome:rolled-back")
                raise ValueError("rolled back")
        except ValueError:
            pass
        wait_until(lambda: len(queued(settings.beanstalk_url)) == 3, 10, "the NOTIFY to wake the relay")
        wait_until(lambda: not rows(reader), 10, "the relay to delete the rows")
    assert [e.id for _, e in queued(settings.beanstalk_url)] == [f"welcome:{n}" for n in range(3)]
    assert relay.stop() == 0


def test_two_postgresql_relays_share_the_rows_and_put_each_once(
        settings: Settings, beanstalkd: Beanstalkd, postgres: Postgres, tmp_path: Path,
        relays: list[RelayProcess]) -> None:
    import psycopg

    url = pg_db(postgres)
    notifier = Notifier(settings.beanstalk_url)
    with psycopg.connect(url) as conn:
        with transaction(conn, notifier, outbox=True) as mail:
            for n in range(400):
                mail.notify("welcome", f"user{n}@example.com", key=f"welcome:{n}")
    for i in range(2):
        relays.append(RelayProcess(settings, url, tmp_path / f"relay{i}.log", "--burst"))
    assert [r.proc.wait(60) for r in relays] == [0, 0]
    moved = [next(e["moved"] for e in r.events() if e["event"] == "outbox relay stopped") for r in relays]
    keys = collections.Counter(e.id for _, e in queued(settings.beanstalk_url))
    assert sum(moved) == 400 and len(keys) == 400 and set(keys.values()) == {1}


def _ready_count(url: str) -> int:
    with connect(url, encoding=None) as c:
        return int(c.stats()["current-jobs-ready"])


def test_a_relay_killed_mid_batch_loses_no_row_and_the_worker_sends_each_key_once(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, postgres: Postgres, tmp_path: Path,
        relays: list[RelayProcess]) -> None:
    """SIGKILL between a batch's puts and its delete: the rows stay (their transaction never
    committed) and are put again by the next relay; the worker's key ledger sends each once."""
    import psycopg

    url = pg_db(postgres)
    with psycopg.connect(url) as conn:
        with transaction(conn, Notifier(settings.beanstalk_url), outbox=True) as mail:
            for n in range(600):
                mail.send_raw(f"Subject: order {n}\r\n\r\nthanks\r\n".encode(), [f"buyer{n}@example.com"],
                              key=f"order:{n}")
    relays.append(first := RelayProcess(settings, url, tmp_path / "first.log", "--burst"))
    with connect(settings.beanstalk_url, encoding=None) as c:
        # a count that is no multiple of the batch (100): a batch is half put, its delete not committed
        deadline = time.monotonic() + 30
        while not c.stats()["current-jobs-ready"] % 100 and first.proc.poll() is None:  # no sleep: a batch is ms
            assert time.monotonic() < deadline, "the first relay never put"
    first.proc.kill()
    first.proc.wait(10)
    relays.append(second := RelayProcess(settings, url, tmp_path / "second.log", "--burst"))
    assert second.proc.wait(60) == 0
    put = _ready_count(settings.beanstalk_url)
    run_burst(settings)
    got = collections.Counter(r for m in smtp.messages for r in m.rcpt_tos)
    print(f"\nRELAY KILL: rows=600 jobs put={put} (again after the kill: {put - 600}) mailed={sum(got.values())}")
    assert put >= 600
    assert got == {f"buyer{n}@example.com": 1 for n in range(600)}


# -- the outside trial: a Django process killed at random moments ---------------------------------

def _count(db: str, run: int) -> int:
    low, high = run * 1_000_000, (run + 1) * 1_000_000
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM trial_rows WHERE n >= %s AND n < %s",
                                        (low, high)).fetchone()[0])
            except psycopg.errors.UndefinedTable:  # the first run has not made its table yet
                return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM trial_rows WHERE n >= ? AND n < ?", (low, high)).fetchone()[0])
    except sqlite3.OperationalError:  # the first run has not made its table yet
        return 0
    finally:
        conn.close()


def _committed(db: str) -> set[int]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return {int(n) for (n,) in conn.execute("SELECT n FROM trial_rows")}
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {int(n) for (n,) in conn.execute("SELECT n FROM trial_rows")}
    finally:
        conn.close()


def _waiting(db: str) -> int:
    proc = beanmail("outbox", "status", "--json", "--db", db, env=bare_env())
    return int(json.loads(proc.stdout)["pending"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_django_killed_at_random_moments_every_committed_row_is_mailed_once_and_no_rolled_back_one(
        backend: str, settings: Settings, smtp: SmtpServer, tmp_path: Path, relays: list[RelayProcess],
        request: pytest.FixtureRequest) -> None:
    """The outside trial: one transaction commits a row and send_mail()s about it; every fifth
    rolls back. The process is SIGKILLed KILLS times at random moments while the relay runs;
    then the relay and a worker drain: each committed row's mail arrives once, no other."""
    if backend == "sqlite":
        app_db, relay_db = str(tmp_path / "app.sqlite3"), f"sqlite://{tmp_path}/app.sqlite3"
    else:
        app_db = relay_db = request.getfixturevalue("postgres").create_database(f"trial{time.monotonic_ns()}")
    site_env = bare_env(settings, OUTBOX_TRIAL_DB=app_db,
                        OUTBOX_TRIAL_OUTBOX=os.environ.get("OUTBOX_TRIAL_OUTBOX", "1"))
    subprocess.run([sys.executable, str(SITE / "manage.py"), "migrate", "-v", "0"], env=site_env, cwd=ROOT,
                   check=True, timeout=120)
    relays.append(relay := RelayProcess(settings, relay_db, tmp_path / "relay.log"))
    rng = random.Random()
    for run in range(1, KILLS + 1):
        trial = subprocess.Popen([sys.executable, str(SITE / "trial.py"), str(run)], env=site_env, cwd=ROOT)
        try:
            wait_until(lambda: _count(app_db, run) > 0 or trial.poll() is not None, 60, "the trial to commit")
            assert trial.poll() is None, f"trial.py exited {trial.returncode}"
            time.sleep(rng.uniform(0, 0.25))  # the kill lands at a random moment of the loop
        finally:
            trial.kill()
            trial.wait(10)
    committed = _committed(app_db)
    wait_until(lambda: _waiting(relay_db) == 0, 60, "the relay to move every row")
    assert relay.stop() == 0
    run_burst(settings)
    mailed = collections.Counter(int(m.message["Subject"].split()[-1]) for m in smtp.messages)
    rolled_back = {n for n in mailed if n % 1_000_000 % 5 == 4}
    print(f"\nOUTBOX TRIAL {backend}: kills={KILLS} committed={len(committed)} mailed={len(mailed)}"
          f" lost={len(committed - set(mailed))} extra={len(set(mailed) - committed)}"
          f" duplicates={sum(mailed.values()) - len(mailed)}")
    assert len(committed) >= KILLS
    assert not rolled_back
    assert set(mailed) == committed  # no committed row without its mail, no mail without its row
    assert set(mailed.values()) == {1}


# -- the documented row, for any language ---------------------------------------------------------

DOC = (ROOT / "docs" / "outbox.md").read_text()


def test_the_documented_ddl_is_what_init_and_migrate_create() -> None:
    blocks = "\n".join(re.findall(r"```sql\n(.*?)```", DOC, re.S))
    for dialect in outbox.DIALECTS:
        for statement in outbox.ddl(dialect):
            assert statement in blocks, f"docs/outbox.md lacks {dialect}'s {statement.splitlines()[0]}"


def test_a_row_written_by_the_documented_sql_in_another_languages_transaction_is_mailed(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> None:
    """What the PHP example of docs/outbox.md does, statement for statement: a signed body built
    by concatenation (docs/envelope.md), inserted with the documented SQL in the app's transaction."""
    import hashlib
    import hmac

    insert = re.search(r"```sql\n(INSERT INTO beanmail_outbox .*?)\n```", DOC, re.S).group(1)
    settings = settings.replace(secret="php-secret")
    path, url = sqlite_db(tmp_path)
    db = sqlite3.connect(path)
    for order, commit in ((7, True), (8, False)):
        job = {"v": 2, "kind": "mail", "id": f"receipt:{order}", "template": "welcome",
               "to": f"buyer{order}@example.com", "context": {"name": "Zoë"}, "priority": "normal",
               "created_at": int(time.time())}
        text = json.dumps(job, ensure_ascii=False)
        body = '{"v":2,"signed":' + text + ',"sig":"' + hmac.new(b"php-secret", text.encode(), hashlib.sha256).hexdigest() + '"}'
        db.execute("INSERT INTO comments (body) VALUES (?)", (f"order {order}",))
        db.execute(insert, (job["id"], "mail.normal", 1024, body))
        db.commit() if commit else db.rollback()
    beanmail("outbox", "run", "--burst", "--db", url, env=bare_env(settings))
    assert rows(db) == []
    run_burst(settings.replace(templates=str(ROOT / "templates")))
    assert [m.rcpt_tos for m in smtp.messages] == [["buyer7@example.com"]]


# -- Flask with SQLAlchemy ------------------------------------------------------------------------

def test_flask_sqlalchemy_session_commits_its_rows_and_their_mail_together(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> None:
    from flask import Flask
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import scoped_session, sessionmaker

    from producer.flask import Beanmail

    path, url = sqlite_db(tmp_path)
    session = scoped_session(sessionmaker(bind=create_engine(f"sqlite:///{path}")))
    app = Flask(__name__)
    app.config.update(BEANMAIL_OUTBOX=True, BEANMAIL_URL=settings.beanstalk_url, BEANMAIL_STORE="")
    mailer = Beanmail(app)
    mailer.attach(session)

    @app.post("/orders/<int:n>")
    def order(n: int) -> str:
        session.execute(text("INSERT INTO comments (id, body) VALUES (:n, 'order')"), {"n": n})
        mailer.send_raw(f"Subject: order {n}\r\n\r\nthanks\r\n".encode(), [f"buyer{n}@example.com"], key=f"order:{n}")
        if n == 2:
            session.rollback()  # the view changes its mind: the row and its mail go together
            return "cancelled"
        session.commit()
        return "ok"
    app.teardown_appcontext(lambda _exc: session.remove())

    client = app.test_client()
    assert [client.post(f"/orders/{n}").text for n in (1, 2, 3)] == ["ok", "cancelled", "ok"]
    db = sqlite3.connect(path)
    assert [k for _, k in rows(db)] == ["order:1", "order:3"]
    assert db.execute("SELECT id FROM comments ORDER BY id").fetchall() == [(1,), (3,)]
    beanmail("outbox", "run", "--burst", "--db", url, env=bare_env(settings))
    run_burst(settings)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["buyer1@example.com", "buyer3@example.com"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_django_notify_on_commit_and_notifier_write_rows_and_a_failed_insert_leaves_the_transaction_whole(
        backend: str, settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        app_db = str(tmp_path / "app.sqlite3")
    else:
        app_db = request.getfixturevalue("postgres").create_database(f"calls{time.monotonic_ns()}")
    site_env = bare_env(settings, OUTBOX_TRIAL_DB=app_db)
    subprocess.run([sys.executable, str(SITE / "manage.py"), "migrate", "-v", "0"], env=site_env, cwd=ROOT,
                   check=True, timeout=120)
    out = subprocess.run([sys.executable, str(SITE / "calls.py")], env=site_env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["outbox"] == [["welcome:zoe", "mail.urgent"], ["welcome:ann", "mail.normal"]]
    assert seen["body_id"] == "welcome:zoe"
    assert seen["sent_silently"] == 0 and "beanmail_outbox" in seen["raised"]
    assert seen["app_rows"] == ["order", "signup"]  # the failed insert cost the mail, not the order


def test_a_large_message_goes_to_the_blob_store_and_its_row_carries_the_reference(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> None:
    path, url = sqlite_db(tmp_path)
    db = sqlite3.connect(path)
    lines = [os.urandom(38).hex() for _ in range(8_000)]  # 600 kB: far over beanstalkd's max-job-size
    message = ("Subject: invoice\r\nContent-Type: text/plain\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()
    with transaction(db, Notifier(settings.beanstalk_url, blobs=settings.store), outbox=True) as mail:
        mail.send_raw(message, ["buyer@example.com"], key="invoice:1")
    (body,) = db.execute("SELECT body FROM beanmail_outbox").fetchone()
    job = env.decode(body)
    assert (job.kind, job.id) == ("ref", "invoice:1") and len(body) < 1000
    beanmail("outbox", "run", "--burst", "--db", url, env=bare_env(settings))
    run_burst(settings)
    (got,) = smtp.messages
    assert got.message.get_content().split() == lines
