"""Fault tests of the production layout: real supervisord running the repository's
supervisord.conf, real beanstalkd with a binlog, a real SMTP server. Each prints its figures
(jobs, kills, lost, duplicates) on a line starting with FAULT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.client import connect

from .conftest import VENV_BIN, bare_env, beanmail
from .servers import Beanstalkd, SmtpServer, free_port, wait_until
from .stack import Supervisor

JOBS = 300


@pytest.fixture
def env(beanstalkd: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> dict[str, str]:
    return bare_env(
        None,
        BEANMAIL_BEANSTALK_URL=beanstalkd.url,
        BEANMAIL_SMTP_URL=smtp.url,
        BEANMAIL_STORE=str(tmp_path / "store.sqlite3"),
        BEANMAIL_FROM="Tests <noreply@beanmail.example>",
        BEANMAIL_SMTP_TIMEOUT="3",
        BEANMAIL_TTR="10",
        BEANMAIL_BACKOFF_BASE="1",
        BEANMAIL_BACKOFF_MAX="2",
        BEANMAIL_MAX_ATTEMPTS="30",
        # a worker killed between a message's end of data and its reply leaves that key in doubt:
        # sent again once after this delay (docs/outcomes.md), short so a run sees it through
        BEANMAIL_IN_DOUBT_DELAY="2",
    )


@pytest.fixture
def stack(env: dict[str, str], tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "stack", env).start()
    yield sup
    sup.shutdown()


def enqueue(url: str, n: int, prefix: str = "r") -> set[str]:
    notifier = Notifier(url)
    addresses = {f"{prefix}{i}@example.com" for i in range(n)}
    for a in sorted(addresses):
        notifier.notify("welcome", a, {"name": a}, key=f"k:{a}")
    notifier.close()
    return addresses


def delivered(smtp: SmtpServer) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in list(smtp.messages))


def wait_all(smtp: SmtpServer, expected: set[str], timeout: float = 60) -> Counter[str]:
    wait_until(lambda: expected <= set(delivered(smtp)), timeout,
               f"all {len(expected)} delivered (have {len(set(delivered(smtp)) & expected)})")
    return delivered(smtp)


def tube_totals(url: str) -> dict[str, int]:
    with connect(url, encoding=None) as c:
        stats = c.stats()
    return {k: int(stats[k]) for k in ("current-jobs-ready", "current-jobs-reserved", "current-jobs-delayed",
                                       "current-jobs-buried")}


def report(name: str, **figures: object) -> None:
    print(f"FAULT {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


def test_supervisord_conf_starts_in_a_fresh_clone_with_nothing_set(beanstalkd: Beanstalkd, smtp: SmtpServer,
                                                                      tmp_path: Path) -> None:
    """`supervisord -c supervisord.conf` as the file's comment says, in a folder laid out like a
    fresh clone (only the tracked files of var/; no log folder made for it) and an environment
    that names neither BEANMAIL_WORKERS nor anything else supervisord would need."""
    env = bare_env(None, BEANMAIL_BEANSTALK_URL=beanstalkd.url, BEANMAIL_SMTP_URL=smtp.url)
    assert not any(name.startswith("BEANMAIL_WORKERS") for name in env)
    home = tmp_path / "clone"
    sup = Supervisor(home, env)
    assert sorted(p.relative_to(home).as_posix() for p in (home / "var").rglob("*") if p.is_file()) == \
        ["var/log/.gitkeep"]
    try:
        sup.start()
        states = sup.wait_running()
    finally:
        sup.shutdown()
    expected = sup.expected()
    assert expected["mail"] >= 1 and expected["urgent"] == 1 and expected["fanout"] == 1
    assert sorted(states) == sorted(f"beanmail:{program}_{i:02d}" for program, n in expected.items() for i in range(n))
    assert all(s == "RUNNING" for s, _ in states.values())
    assert (home / "var" / "log" / "mail_00.log").exists() and (home / "var" / "log" / "supervisord.log").exists()


def test_kill_9_a_worker_mid_run_loses_nothing(stack: Supervisor, beanstalkd: Beanstalkd, smtp: SmtpServer) -> None:
    smtp.handler.data_delay = 0.005  # keep the run long enough to land a kill inside it
    expected = enqueue(beanstalkd.url, JOBS)
    kills = 0
    for target in ("beanmail:mail_00", "beanmail:mail_01"):
        wait_until(lambda: len(smtp.messages) >= 60 * (kills + 1), 30, "the run to be under way")
        _, pid = stack.states()[target]
        os.kill(pid, signal.SIGKILL)
        kills += 1
    got = wait_all(smtp, expected)
    states = stack.wait_running()
    assert all(states[t][1] != 0 for t in ("beanmail:mail_00", "beanmail:mail_01"))
    lost = len(expected - set(got))
    duplicates = sum(got.values()) - len(got)
    report("kill-9", jobs=JOBS, kills=kills, lost=lost, duplicates=duplicates)
    assert lost == 0
    assert duplicates <= kills  # at most the one message in hand per kill; the store dedupes the rest
    assert tube_totals(beanstalkd.url)["current-jobs-reserved"] == 0


def test_supervisorctl_stop_exits_0_in_time_and_leaves_nothing_reserved(stack: Supervisor, beanstalkd: Beanstalkd,
                                                                        smtp: SmtpServer) -> None:
    smtp.handler.data_delay = 0.005
    expected = enqueue(beanstalkd.url, JOBS)
    wait_until(lambda: len(smtp.messages) >= 50, 30, "the run to be under way")
    started = time.monotonic()
    stack.ctl("stop", "beanmail:*", check=True)
    took = time.monotonic() - started
    log = stack.log()
    for name in ("mail_00", "mail_01", "urgent_00", "fanout_00", "digest_00"):
        assert f"stopped: {name} (exit status 0)" in log
    assert "SIGKILL" not in log
    assert took < 150  # stopwaitsecs
    totals = tube_totals(beanstalkd.url)
    assert totals["current-jobs-reserved"] == 0
    sent_before_restart = len(smtp.messages)
    stack.ctl("start", "beanmail:*", check=True)
    got = wait_all(smtp, expected)
    lost = len(expected - set(got))
    report("supervisorctl-stop", jobs=JOBS, stop_seconds=round(took, 2), sent_before_stop=sent_before_restart,
           lost=lost, duplicates=sum(got.values()) - len(got))
    assert lost == 0 and sum(got.values()) == len(got)


def test_beanstalkd_restart_mid_run_loses_nothing_and_workers_reconnect(stack: Supervisor, beanstalkd: Beanstalkd,
                                                                        smtp: SmtpServer) -> None:
    smtp.handler.data_delay = 0.005
    pids = {name: pid for name, (_, pid) in stack.states().items()}
    expected = enqueue(beanstalkd.url, JOBS)
    wait_until(lambda: len(smtp.messages) >= 50, 30, "the run to be under way")
    beanstalkd.stop()
    down_at = len(smtp.messages)
    beanstalkd.start()  # same port, same binlog
    got = wait_all(smtp, expected)
    lost = len(expected - set(got))
    duplicates = sum(got.values()) - len(got)
    report("beanstalkd-restart", jobs=JOBS, sent_before_restart=down_at, lost=lost, duplicates=duplicates)
    assert lost == 0 and duplicates == 0
    assert {name: pid for name, (_, pid) in stack.wait_running().items()} == pids  # no process restarted
    reconnects = [e for e in stack.events("mail_00") + stack.events("mail_01") if e["event"] == "connected"]
    assert len(reconnects) >= 4  # each mail worker: the first connection and at least one after the restart


def test_smtp_down_then_back_delivers_everything_without_a_busy_loop(stack: Supervisor, beanstalkd: Beanstalkd,
                                                                     smtp: SmtpServer) -> None:
    n = 20
    smtp.stop()
    down = time.monotonic()
    expected = enqueue(beanstalkd.url, n)

    def deferrals() -> int:
        return sum(1 for e in stack.all_events() if e.get("outcome") == "deferred")
    wait_until(lambda: deferrals() >= 3 * n, 30, "every job to be retried twice")
    smtp.start()
    downtime = time.monotonic() - down
    attempts = deferrals()
    got = wait_all(smtp, expected, timeout=30)
    report("smtp-down", jobs=n, downtime_s=round(downtime, 1), connection_attempts=attempts,
           lost=len(expected - set(got)), duplicates=sum(got.values()) - len(got))
    assert set(got) == expected
    # backoff >= 0.5 s per job: a busy loop would make thousands of attempts in that time
    assert attempts <= n * (downtime / 0.5 + 2)


def test_poison_burst_is_buried_with_reasons_and_nothing_restarts(stack: Supervisor, beanstalkd: Beanstalkd,
                                                                  smtp: SmtpServer, env: dict[str, str]) -> None:
    pids = {name: pid for name, (_, pid) in stack.states().items()}
    with connect(beanstalkd.url, encoding=None) as c:
        c.use("mail.normal")
        for i in range(20):
            c.put(b"\xde\xad\xbe\xef")
            c.put(json.dumps({"v": 1, "kind": "mail", "id": f"p{i}", "template": "nope",
                              "to": f"p{i}@example.com"}).encode())
    expected = enqueue(beanstalkd.url, 20, prefix="good")
    wait_all(smtp, expected, timeout=30)
    wait_until(lambda: tube_totals(beanstalkd.url)["current-jobs-buried"] == 40, 30, "40 buried")
    buried = json.loads(beanmail("buried", "--json", "--limit", "100", env=stack.env).stdout)
    reasons = Counter(j["reason"].split(":")[0] for j in buried)
    report("poison-burst", good=20, poison=40, buried=len(buried), restarts=0)
    assert len(buried) == 40 and all(j["outcome"] == "poison" and j["state"] == "buried" for j in buried)
    assert reasons == {"bad envelope": 20, "unknown template 'nope'": 20}
    assert {name: pid for name, (_, pid) in stack.wait_running().items()} == pids


def test_operator_cli_status_kick_pause_peek(stack: Supervisor, beanstalkd: Beanstalkd, smtp: SmtpServer) -> None:
    with connect(beanstalkd.url, encoding=None) as c:
        c.use("mail.bulk")
        bad = c.put(b"{}")
    wait_until(lambda: tube_totals(beanstalkd.url)["current-jobs-buried"] == 1, 30, "the job buried")
    status = json.loads(beanmail("status", "--json", env=stack.env).stdout)
    procs = {p["name"]: p["state"] for p in status["supervisor"]["processes"]}
    assert procs == {"beanmail:fanout_00": "RUNNING", "beanmail:mail_00": "RUNNING", "beanmail:digest_00": "RUNNING",
                     "beanmail:mail_01": "RUNNING", "beanmail:urgent_00": "RUNNING", "beanmail:web_00": "RUNNING",
                     "beanmail:outbox_00": "RUNNING", "beanmail:events_00": "RUNNING"}
    tubes = {t["tube"]: t for t in status["tubes"]}
    assert tubes["mail.bulk"]["buried"] == 1 and tubes["mail.urgent"]["watching"] == 3
    human = beanmail("status", env=stack.env).stdout
    assert "mail.bulk" in human and "beanmail:mail_00" in human and "RUNNING" in human
    peek = json.loads(beanmail("peek", str(bad), "--json", env=stack.env).stdout)
    assert peek["state"] == "buried" and "unknown field" not in peek["reason"] and "'v' must be 1" in peek["reason"]
    assert "'v' must be 1" in beanmail("buried", env=stack.env).stdout
    beanmail("pause", "mail.bulk", "60", env=stack.env)
    assert json.loads(beanmail("kick", "--job", str(bad), "--json", env=stack.env).stdout) == {"mail.bulk": 1}
    with connect(beanstalkd.url, encoding=None) as c:
        assert c.stats_job(bad)["state"] == "ready"  # paused: kicked but not reserved
    missing = beanmail("peek", "999999", env=stack.env, check=False)
    assert missing.returncode == 1 and "no job 999999" in missing.stderr


def test_sigterm_finishes_the_job_in_hand_and_exits_0(beanstalkd: Beanstalkd, smtp: SmtpServer,
                                                       env: dict[str, str]) -> None:
    smtp.handler.data_delay = 1.0
    proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "worker"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        job = Notifier(beanstalkd.url).notify("welcome", "slow@example.com", {"name": "x"})
        with connect(beanstalkd.url, encoding=None) as c:
            wait_until(lambda: c.stats_job(job)["state"] == "reserved", 10, "the job reserved")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert [m.rcpt_tos for m in smtp.messages] == [["slow@example.com"]]
    assert tube_totals(beanstalkd.url) == {"current-jobs-ready": 0, "current-jobs-reserved": 0,
                                           "current-jobs-delayed": 0, "current-jobs-buried": 0}


def test_a_hung_beanstalkd_socket_is_bounded_by_a_timeout(env: dict[str, str]) -> None:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        proc = beanmail("worker", "--burst", env={**env, "BEANMAIL_BEANSTALK_URL": f"beanstalk://127.0.0.1:{port}",
                                                  "BEANMAIL_BEANSTALK_TIMEOUT": "0.5"}, check=False, timeout=20)
    finally:
        listener.close()
        for s in accepted:
            s.close()
    assert proc.returncode == 69
    assert "timed out" in proc.stdout


def test_sighup_reloads_templates_without_a_restart(beanstalkd: Beanstalkd, smtp: SmtpServer, env: dict[str, str],
                                                    tmp_path: Path) -> None:
    import shutil

    from .conftest import ROOT

    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "worker"], env={**env, "BEANMAIL_TEMPLATES": str(templates)},
                            stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        notifier = Notifier(beanstalkd.url)
        notifier.notify("welcome", "a@example.com", {"name": "A"})
        smtp.wait_for(1)
        (templates / "welcome" / "subject.txt").write_text("Hello again, {{ name }}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any('"templates reloaded"' in line for line in lines), 10, "the reload")
        notifier.notify("welcome", "b@example.com", {"name": "B"})
        subjects = [m.message["Subject"] for m in smtp.wait_for(2)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert subjects == ["Welcome to beanmail, A!", "Hello again, B"]
