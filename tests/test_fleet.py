"""Several beanstalkd servers on one host: producers spread jobs by key and fail over, workers
reserve from every server and come back to one that returns from its binlog."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.client import connect
from worker.settings import Settings

from .conftest import ROOT, bare_env, beanmail
from .servers import Beanstalkd, SmtpServer, wait_until


@pytest.fixture
def second(tmp_path: Path) -> Iterator[Beanstalkd]:
    server = Beanstalkd(tmp_path / "beanstalkd-2").start()
    yield server
    server.stop(kill=True)


def jobs_on(server: Beanstalkd) -> int:
    with connect(server.url, encoding=None) as c:
        return int(c.stats()["total-jobs"])


def waiting(server: Beanstalkd) -> int:
    with connect(server.url, encoding=None) as c:
        s = c.stats()
        return sum(int(s[f"current-jobs-{k}"]) for k in ("ready", "reserved", "delayed", "buried"))


def test_jobs_spread_over_the_servers_by_key_and_a_repeat_lands_on_the_same_one(beanstalkd: Beanstalkd,
                                                                              second: Beanstalkd) -> None:
    n = Notifier(f"{beanstalkd.url},{second.url}")
    for i in range(200):
        n.notify("welcome", f"u{i}@example.com", {"name": "x"}, key=f"spread:{i}")
    first, other = jobs_on(beanstalkd), jobs_on(second)
    assert first + other == 200 and 60 <= first <= 140, (first, other)
    for i in range(200):  # the same keys again: each on the server it went to before
        n.notify("welcome", f"u{i}@example.com", {"name": "x"}, key=f"spread:{i}")
    assert (jobs_on(beanstalkd), jobs_on(second)) == (2 * first, 2 * other)


def test_a_server_that_is_down_is_failed_over_and_none_left_means_the_spool(beanstalkd: Beanstalkd,
                                                                           second: Beanstalkd, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    n = Notifier(f"{beanstalkd.url},{second.url}", spool=str(spool))
    second.stop(kill=True)
    ids = [n.notify("welcome", f"u{i}@example.com", {"name": "x"}, key=f"over:{i}") for i in range(50)]
    assert all(ids) and jobs_on(beanstalkd) == 50  # every job queued, none spooled
    beanstalkd.stop(kill=True)
    assert n.notify("welcome", "last@example.com", {"name": "x"}, key="over:last") == 0
    assert len(spool.read_text().splitlines()) == 1


def test_workers_reserve_from_every_server_and_status_shows_each(settings: Settings, beanstalkd: Beanstalkd,
                                                                second: Beanstalkd, smtp: SmtpServer) -> None:
    fleet = f"{beanstalkd.url},{second.url}"
    n = Notifier(fleet)
    for i in range(60):
        n.notify("welcome", f"u{i}@example.com", {"name": f"k{i}"}, key=f"both:{i}")
    n.notify("welcome", "urgent@example.com", {"name": "urgent"}, key="both:urgent", priority="urgent")
    env = bare_env(settings, BEANMAIL_BEANSTALK_URL=fleet)
    waiting = beanmail("status", "--json", env=env, check=False)
    status = json.loads(waiting.stdout)
    assert [s["url"] for s in status["servers"]] == [beanstalkd.url, second.url]
    assert sum(t["ready"] for t in status["tubes"]) == 61
    # ready mail and no worker on either server: unhealthy, each server's tubes named
    assert waiting.returncode == 1 and f"no worker watches mail.urgent on {second.url}: 1 job(s) ready" in status["problems"]
    beanmail("worker", "--burst", env=env)
    got = Counter(str(m.message["Subject"]) for m in smtp.wait_for(61))
    assert len(got) == 61 and max(got.values()) == 1
    text = beanmail("status", env=env).stdout
    assert f"beanstalkd {beanstalkd.url}: up" in text and f"beanstalkd {second.url}: up" in text


def test_a_server_killed_and_back_from_its_binlog_is_drained_by_a_running_worker(
        settings: Settings, beanstalkd: Beanstalkd, second: Beanstalkd, smtp: SmtpServer, tmp_path: Path) -> None:
    fleet = f"{beanstalkd.url},{second.url}"
    second_only = Notifier(second.url)
    for i in range(20):  # queued on the second server, which then dies
        second_only.notify("welcome", f"b{i}@example.com", {"name": f"b{i}"}, key=f"binlog:{i}")
    second.stop(kill=True)
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / ".venv/bin/beanmail"), "worker"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=bare_env(settings, BEANMAIL_BEANSTALK_URL=fleet))
    try:
        Notifier(fleet).notify("welcome", "a@example.com", {"name": "a"}, key="binlog:a")  # fails over
        smtp.wait_for(1, timeout=20)
        assert "beanstalkd unreachable, retrying" in log.read_text()
        second.start()  # same port, same binlog
        smtp.wait_for(21, timeout=60)
        wait_until(lambda: waiting(second) == 0 and waiting(beanstalkd) == 0, 20, "both servers drained")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    got = Counter(str(m.message["Subject"]) for m in smtp.messages)
    assert len(got) == 21 and max(got.values()) == 1


def test_a_job_id_command_with_several_servers_asks_which(settings: Settings, beanstalkd: Beanstalkd,
                                                          second: Beanstalkd) -> None:
    env = bare_env(settings, BEANMAIL_BEANSTALK_URL=f"{beanstalkd.url},{second.url}")
    proc = beanmail("peek", "1", env=env, check=False)
    assert proc.returncode == 2 and "--server URL" in proc.stderr
    job = Notifier(second.url).notify("welcome", "z@example.com", {"name": "z"})
    assert f'"id": {job}' in beanmail("--server", second.url, "peek", str(job), "--json", env=env).stdout


def test_urgent_mail_keeps_its_priority_on_every_server(settings: Settings, beanstalkd: Beanstalkd,
                                                        second: Beanstalkd, smtp: SmtpServer) -> None:
    """Each server has its own loop, which reserves urgent first: an urgent mail queued behind a
    bulk backlog on either server goes before that backlog."""
    for server in (beanstalkd, second):
        n = Notifier(server.url)
        for i in range(40):
            n.notify("welcome", f"bulk{i}-{server.port}@example.com", {"name": "bulk"}, key=f"bulk:{server.port}:{i}",
                     priority="bulk")
        n.notify("welcome", f"urgent-{server.port}@example.com", {"name": "urgent"}, key=f"u:{server.port}",
                 priority="urgent")
    env = bare_env(settings, BEANMAIL_BEANSTALK_URL=f"{beanstalkd.url},{second.url}")
    beanmail("worker", "--burst", env=env)
    order = [m.rcpt_tos[0] for m in smtp.wait_for(82)]
    for s in (beanstalkd, second):  # each server's urgent mail before every bulk mail of that server
        # (the two loops start at their own pace: the other server's bulk may well come first)
        own_bulk = [i for i, r in enumerate(order) if r.startswith("bulk") and r.endswith(f"-{s.port}@example.com")]
        assert len(own_bulk) == 40 and order.index(f"urgent-{s.port}@example.com") < min(own_bulk), order[:8]
