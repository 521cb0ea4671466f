from __future__ import annotations

import contextlib
import time
import threading
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.envelope import Envelope
from worker.loop import Worker
from worker.flight import sending_stage
from worker.settings import Settings
from worker.store import Store

from .servers import Beanstalkd, MariaDB, Postgres, SmtpServer

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def beanstalkd(tmp_path: Path) -> Iterator[Beanstalkd]:
    server = Beanstalkd(tmp_path / "beanstalkd").start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One MariaDB server for the session (mariadb-install-db once); each test its own database."""
    server = MariaDB().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on both backends."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"t{time.monotonic_ns()}")


@pytest.fixture
def settings(beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> Settings:
    return Settings(
        beanstalk_url=beanstalkd.url,
        smtp_url=smtp.url,
        smtp_timeout=5,
        ttr=30,
        store=str(tmp_path / "store.sqlite3"),
        from_addr="Beanmail Tests <noreply@beanmail.example>",
        backoff_base=1,
        backoff_max=2,
        max_attempts=3,
        supervisor_url=f"unix://{tmp_path}/no-supervisor.sock",
    )


@pytest.fixture
def notifier(settings: Settings) -> Iterator[Notifier]:
    n = Notifier(settings.beanstalk_url, secret=settings.secret or None)
    yield n
    n.close()


def run_burst(settings: Settings) -> Worker:
    """An in-process `beanmail worker --burst`: real beanstalkd, real SMTP, real store."""
    store = Store(settings.store)
    worker = Worker(settings, sending_stage(settings, store), store)
    assert worker.run(burst=True) == 0
    store.close()
    return worker


@contextlib.contextmanager
def running_worker(settings: Settings) -> Iterator[Worker]:
    """A long-running in-process worker, stopped (as SIGTERM would) when the block ends."""
    store = Store(settings.store)
    worker = Worker(settings, sending_stage(settings, store), store)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stopping = True
        thread.join(settings.reserve_timeout + 10)
        assert not thread.is_alive()
        store.close()


def queued(url: str) -> list[tuple[str, "Envelope"]]:
    """Every ready job of the mail tubes as (tube, envelope), in the order they were put; left ready."""
    import greenstalk

    from producer import envelope as env
    from producer.client import connect

    jobs = []
    with connect(url, encoding=None) as c:
        for tube in env.MAIL_TUBES:
            c.watch(tube)
        while True:
            try:
                job = c.reserve(0)
            except greenstalk.TimedOutError:
                break
            jobs.append((job.id, c.stats_job(job)["tube"], job))
        for _, _, job in jobs:
            c.release(job, priority=1024)
    return [(tube, env.decode(job.body)) for _, tube, job in sorted(jobs, key=lambda j: j[0])]


def job_state(settings: Settings, job_id: int) -> str | None:
    """A job's state in beanstalkd, None once it is gone (deleted)."""
    import greenstalk

    from producer.client import connect

    with connect(settings.beanstalk_url, encoding=None) as c:
        try:
            return str(c.stats_job(job_id)["state"])
        except greenstalk.NotFoundError:
            return None


def poison_reasons(settings: Settings) -> dict[int, str]:
    """The reasons recorded for jobs buried as poison, by job id (read from the store's file)."""
    import sqlite3

    db = sqlite3.connect(settings.store)
    try:
        return dict(db.execute("SELECT job_id, reason FROM failures WHERE outcome = 'poison'").fetchall())
    finally:
        db.close()


def bare_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """The environment supervisord gives a program: no locale, no HOME; only what is configured."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}
    if settings is not None:
        env.update({
            "BEANMAIL_BEANSTALK_URL": settings.beanstalk_url, "BEANMAIL_SMTP_URL": settings.smtp_url,
            "BEANMAIL_STORE": settings.store, "BEANMAIL_FROM": settings.from_addr,
            "BEANMAIL_BACKOFF_BASE": str(settings.backoff_base), "BEANMAIL_MAX_ATTEMPTS": str(settings.max_attempts),
            "BEANMAIL_SMTP_TIMEOUT": str(settings.smtp_timeout), "BEANMAIL_TTR": str(settings.ttr),
            "BEANMAIL_SUPERVISOR_URL": settings.supervisor_url,
        })
        if settings.secret:
            env["BEANMAIL_SECRET"] = settings.secret
    env.update(extra)
    return env


def beanmail(*args: str, env: dict[str, str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(VENV_BIN / "beanmail"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"beanmail {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# The fast tier: `make test-unit` (pytest -m unit) runs, in seconds, every test that needs none of
# the server fixtures, so a change to a stage can be checked before the whole suite.
SERVER_FIXTURES = {"beanstalkd", "smtp", "postgres", "mariadb", "store_location", "settings", "notifier", "tmpfs",
                   "stack", "env", "django_app", "maildev", "relay", "dnsmasq", "browser", "console",
                   "fleet", "dns"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: needs no server; run alone with `make test-unit`")
    config.addinivalue_line("markers", "server: starts a server (or installs, or runs a pool) itself: not in the unit tier")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("server"):
            item.add_marker(pytest.mark.unit)
