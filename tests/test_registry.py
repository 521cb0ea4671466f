"""The worker registry against real supervisord: workers register and beat, a disabled host's
workers finish and exit 0 and stay down, enabling starts them again, a silent worker is lost
and its claims released."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from worker.store import Store

from .conftest import ROOT, beanmail
from .servers import Beanstalkd, SmtpServer, wait_until
from .stack import Supervisor
from .test_supervisor import env as env  # noqa: F401 - the same environment fixture

HOST = socket.gethostname()


def workers(env: dict[str, str]) -> list[dict]:
    return json.loads(beanmail("workers", "--json", env=env).stdout)


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:  # noqa: F811
    return {**env, "BEANMAIL_HEARTBEAT": "0.3", "BEANMAIL_LOST_AFTER": "2"}


@pytest.fixture
def stack(fast_env: dict[str, str], tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "stack", fast_env).start()
    yield sup
    sup.shutdown()


def test_disabled_workers_finish_exit_0_stay_down_and_come_back_when_enabled(
        stack: Supervisor, beanstalkd: Beanstalkd, smtp: SmtpServer) -> None:
    env = stack.env
    running = wait_until(lambda: [w for w in workers(env) if w["state"] == "running"]
                         if len([w for w in workers(env) if w["state"] == "running"]) == 3 else None,
                         20, "three mail workers registered")
    assert {w["host"] for w in running} == {HOST} and all(w["last_seen"] > time.time() - 5 for w in running)
    assert {"host", "pid", "state", "last_seen", "tubes", "jobs_done"} <= set(running[0])

    out = beanmail("workers", "disable", HOST, env=env).stdout
    assert f"disabled {HOST}" in out

    def exited() -> bool:
        states = stack.states()
        return all(states[p][0] == "EXITED" for p in states if p.startswith(("beanmail:mail", "beanmail:urgent")))
    wait_until(exited, 20, "the disabled workers to exit")
    assert stack.log().count("(exit status 0; expected)") == 3
    assert {w["state"] for w in workers(env)} == {"disabled"}

    Notifier(env["BEANMAIL_BEANSTALK_URL"]).notify("welcome", "held@example.com", {"name": "held"}, key="held")
    wait_until(lambda: all(s == "EXITED" for p, (s, _) in stack.states().items() if "mail_" in p), 3,
               "nothing restarted")  # still down a moment later: supervisord keeps an expected exit down
    assert smtp.messages == []

    out = beanmail("workers", "enable", HOST, env=env).stdout
    assert "started beanmail:mail_00" in out
    smtp.wait_for(1, timeout=20)
    wait_until(lambda: len([w for w in workers(env) if w["state"] == "running"]) == 3, 20, "all back")


def test_a_silent_worker_is_lost_and_its_claims_released(fast_env: dict[str, str], beanstalkd: Beanstalkd,
                                                         tmp_path: Path) -> None:
    log = open(tmp_path / "w.log", "w")
    proc = subprocess.Popen([str(ROOT / ".venv/bin/beanmail"), "worker"], env=fast_env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    [me] = wait_until(lambda: [w for w in workers(fast_env) if w["pid"] == proc.pid], 20, "the worker to register")
    store = Store(fast_env["BEANMAIL_STORE"])
    store.claim("held:1", "x@example.com", "welcome", lease=3600)
    store.execute("UPDATE deliveries SET claimed_by = ? WHERE key = 'held:1'", (f"{me['id']}:1",))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    lost = wait_until(lambda: [w for w in workers(fast_env) if w["pid"] == proc.pid and w["state"] == "lost"],
                      20, "the worker to be marked lost")
    assert lost
    [row] = store.all("SELECT claim_expires FROM deliveries WHERE key = 'held:1'")
    assert row[0] == 0  # any worker may take the key now, without waiting an hour
