"""The operator commands through the real CLI, against a real beanstalkd and store: what an
operator types, what it prints, its exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import greenstalk
import pytest

from producer import Notifier
from producer.client import connect
from worker.settings import Settings

from .conftest import ROOT, VENV_BIN, bare_env, beanmail, run_burst
from .servers import Maildev, free_port, port_open, which


def bury(url: str, tube: str, n: int, body: bytes = b"{}") -> list[int]:
    """``n`` jobs put on ``tube`` and buried, as a worker buries poison."""
    ids = []
    with connect(url, encoding=None) as c:
        c.use(tube)
        c.watch(tube)
        for _ in range(n):
            c.put(body)
            job = c.reserve(timeout=5)
            c.bury(job)
            ids.append(job.id)
        c.ignore("default")
    return ids


def state(url: str, job_id: int) -> str | None:
    with connect(url, encoding=None) as c:
        try:
            return str(c.stats_job(job_id)["state"])
        except greenstalk.NotFoundError:
            return None


def buried_in(url: str, tube: str) -> int:
    with connect(url, encoding=None) as c:
        try:
            return int(c.stats_tube(tube)["current-jobs-buried"])
        except greenstalk.NotFoundError:
            return 0


# -- delete and kick ------------------------------------------------------------------------------

def test_delete_one_job_then_every_buried_job_of_one_tube(settings: Settings) -> None:
    env, url = bare_env(settings), settings.beanstalk_url
    first, *rest = bury(url, "mail.bulk", 3)
    other = bury(url, "mail.normal", 1)[0]
    with connect(url, encoding=None) as c:
        c.use("mail.bulk")
        ready = c.put(b"{}")

    out = beanmail("delete", "--job", str(first), env=env).stdout
    assert out == f"mail.bulk: deleted job {first}\n"
    assert state(url, first) is None

    out = beanmail("delete", "--tube", "mail.bulk", "--buried", env=env).stdout
    assert out == "mail.bulk: deleted 2 buried job(s)\n"
    assert [state(url, j) for j in rest] == [None, None]
    assert state(url, ready) == "ready" and state(url, other) == "buried"  # only the buried, only that tube

    assert beanmail("delete", "--tube", "mail.bulk", "--buried", env=env).stdout == "no buried jobs in mail.bulk\n"
    assert json.loads(beanmail("delete", "--tube", "mail.bulk", "--buried", "--json", env=env).stdout) == {}
    assert json.loads(beanmail("delete", "--tube", "mail.normal", "--buried", "--json", env=env).stdout) == {
        "mail.normal": 1}
    assert beanmail("delete", "--tube", "no.such.tube", "--buried", env=env).stdout == "no buried jobs in no.such.tube\n"

    missing = beanmail("delete", "--job", str(first), env=env, check=False)
    assert missing.returncode == 1 and f"no job {first}" in missing.stderr
    for args in ((), ("--tube", "mail.bulk"), ("--buried",), ("--job", "1", "--tube", "mail.bulk", "--buried")):
        refused = beanmail("delete", *args, env=env, check=False)
        assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1
    assert state(url, ready) == "ready"

    with connect(url, encoding=None) as holder:  # a worker holding a job: not the operator's to delete
        holder.watch("mail.bulk")
        held = holder.reserve(timeout=5)
        refused = beanmail("delete", "--job", str(held.id), env=env, check=False)
        assert refused.returncode == 1 and "reserved by a worker" in refused.stderr
        assert state(url, held.id) == "reserved"


def test_kick_all_kicks_every_buried_job_of_every_tube_and_never_a_delayed_one(settings: Settings) -> None:
    env, url = bare_env(settings), settings.beanstalk_url
    bulk, normal = bury(url, "mail.bulk", 3), bury(url, "mail.normal", 2)
    with connect(url, encoding=None) as c:
        c.use("mail.urgent")
        waiting = c.put(b"{}", delay=3600)  # a retry waiting out its backoff

    assert beanmail("kick", "--tube", "mail.urgent", "1", env=env).stdout == "no buried jobs in mail.urgent\n"
    assert beanmail("kick", "--tube", "mail.urgent", "--all", env=env).stdout == "no buried jobs in mail.urgent\n"
    assert state(url, waiting) == "delayed"  # beanstalkd's own kick would have moved it

    out = beanmail("kick", "--all", env=env).stdout
    assert sorted(out.splitlines()) == ["mail.bulk: kicked 3", "mail.normal: kicked 2"]
    assert {state(url, j) for j in bulk + normal} == {"ready"} and state(url, waiting) == "delayed"

    assert beanmail("kick", "--all", env=env).stdout == "nothing to kick: no tube has buried jobs\n"
    assert json.loads(beanmail("kick", "--all", "--json", env=env).stdout) == {}

    more = bury(url, "mail.bulk", 3)
    assert json.loads(beanmail("kick", "2", "--json", env=env).stdout) == {"mail.bulk": 2}
    assert json.loads(beanmail("kick", "--all", "--tube", "mail.bulk", "--json", env=env).stdout) == {"mail.bulk": 1}
    assert {state(url, j) for j in more} == {"ready"} and state(url, waiting) == "delayed"


def test_a_bare_kick_is_refused_and_names_the_three_forms(settings: Settings) -> None:
    env, url = bare_env(settings), settings.beanstalk_url
    job = bury(url, "mail.bulk", 1)[0]
    refused = beanmail("kick", env=env, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1
    assert all(form in refused.stderr for form in ("kick N", "kick --all", "kick --job ID"))
    for args in (("3", "--all"), ("--all", "--job", str(job)), ("0",)):
        assert beanmail("kick", *args, env=env, check=False).returncode == 2
    assert state(url, job) == "buried"  # nothing moved


# -- peek, log, suppress ----------------------------------------------------------------------------

def test_peek_on_a_finished_job_points_to_the_log_and_to_the_failure_record(settings: Settings,
                                                                           notifier: Notifier) -> None:
    env = bare_env(settings)
    sent = notifier.notify("welcome", "ann@example.com", {"name": "Ann"}, key="welcome:ann")
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use("mail.normal")
        poison = c.put(b'{"v": 2}')
    run_burst(settings)
    assert state(settings.beanstalk_url, sent) is None and state(settings.beanstalk_url, poison) == "buried"

    gone = beanmail("peek", str(sent), env=env, check=False)
    assert gone.returncode == 1 and len(gone.stderr.splitlines()) == 1
    assert f"no job {sent}" in gone.stderr and "may have finished" in gone.stderr
    assert "beanmail log --key" in gone.stderr and "buried" not in gone.stderr
    assert "sent" in beanmail("log", "--key", "welcome:ann", env=env).stdout  # where the hint leads

    beanmail("delete", "--job", str(poison), env=env)
    deleted = beanmail("peek", str(poison), env=env, check=False)
    assert deleted.returncode == 1 and "beanmail log --key" in deleted.stderr
    assert "buried as poison" in deleted.stderr and "bad envelope" in deleted.stderr  # the recorded reason


def test_log_to_accepts_any_form_of_the_address(settings: Settings, notifier: Notifier) -> None:
    env = bare_env(settings)
    notifier.notify("welcome", "Zoë <Zoe@Example.com>", {"name": "Zoë"}, key="welcome:zoe")
    notifier.notify("welcome", "bob@example.com", {"name": "Bob"}, key="welcome:bob")
    run_burst(settings)
    for form in ("Zoë <ZOE@example.com>", "zoe@example.com", "Zoe@EXAMPLE.com", "<zoe@example.com>"):
        rows = json.loads(beanmail("log", "--to", form, "--json", env=env).stdout)
        assert [(r["key"], r["recipient"], r["outcome"]) for r in rows] == [("welcome:zoe", "zoe@example.com", "sent")]
        assert "welcome:zoe" in beanmail("log", "--to", form, env=env).stdout
    assert beanmail("log", "--to", "nobody@example.com", env=env).stdout == "nothing recorded\n"
    bad = beanmail("log", "--to", "a@example.com, b@example.com", env=env, check=False)
    assert bad.returncode == 2 and "not one recipient" in bad.stderr


def test_suppress_list_says_when_it_is_empty(settings: Settings) -> None:
    env = bare_env(settings)
    assert beanmail("suppress", "list", env=env).stdout == "the suppression list is empty\n"
    assert json.loads(beanmail("suppress", "list", "--json", env=env).stdout) == []
    assert beanmail("suppress", "add", "Zoë <ZOE@example.com>", env=env).stdout == "suppressed zoe@example.com\n"
    assert beanmail("suppress", "list", env=env).stdout.startswith("zoe@example.com  operator  ")
    assert beanmail("suppress", "remove", "zoe@example.com", env=env).stdout == "removed zoe@example.com\n"
    assert beanmail("suppress", "list", env=env).stdout == "the suppression list is empty\n"


# -- a closed stdout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("status",), ("buried",), ("suppress", "list"), ("kick", "--all")])
def test_a_closed_stdout_ends_quietly_with_141(settings: Settings, args: tuple[str, ...]) -> None:
    """`beanmail status | head -1`, made deterministic: the reader is gone before the first write."""
    bury(settings.beanstalk_url, "mail.bulk", 1)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([str(VENV_BIN / "beanmail"), *args], env=bare_env(settings), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


# -- the store at start ------------------------------------------------------------------------------

STORE_COMMANDS = [("log", "--key", "k"), ("log", "--to", "a@example.com"), ("suppress", "list"),
                  ("suppress", "add", "a@example.com"), ("buried",), ("peek", "1"),
                  ("worker", "--burst"), ("fanout", "--burst")]


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: " ".join(a))
def test_an_unreachable_store_is_one_line_and_exit_69(settings: Settings, args: tuple[str, ...]) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/beanmail"
    proc = beanmail(*args, env=bare_env(settings, BEANMAIL_STORE=closed), check=False)
    assert proc.returncode == 69, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("beanmail: store unavailable: ")
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: " ".join(a))
def test_a_file_that_is_not_a_store_is_one_line_and_exit_78(settings: Settings, tmp_path: Path,
                                                             args: tuple[str, ...]) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(bytes(range(256)) * 64)
    proc = beanmail(*args, env=bare_env(settings, BEANMAIL_STORE=str(garbage)), check=False)
    assert proc.returncode == 78, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("beanmail: store corrupt: ")
    assert str(garbage) in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert garbage.read_bytes() == bytes(range(256)) * 64  # left as it was, for a person to look at


# -- the worker at start ------------------------------------------------------------------------------

def test_a_worker_on_the_mailout_tube_is_refused_with_exit_78(settings: Settings) -> None:
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use("mailout")
        chunk = c.put(b'{"v": 1, "kind": "mailout"}')
    for args in (("--tubes", "mailout"), ("--tubes", "mail.normal,mailout")):
        proc = beanmail("worker", "--burst", *args, env=bare_env(settings), check=False)
        assert proc.returncode == 78 and len(proc.stderr.splitlines()) == 1
        assert "`beanmail fanout`" in proc.stderr
    assert state(settings.beanstalk_url, chunk) == "ready"  # not buried as poison


def _warnings(proc: subprocess.CompletedProcess[str]) -> list[str]:
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [e["event"] for e in events if e["level"] == "warning"]


def test_a_bulk_worker_without_list_unsubscribe_warns_at_start(settings: Settings) -> None:
    env = bare_env(settings)
    warned = _warnings(beanmail("worker", "--burst", "--tubes", "mail.bulk", env=env))
    assert len(warned) == 1 and all(w in warned[0] for w in ("List-Unsubscribe", "Gmail", "Yahoo", "bulk"))
    assert len(_warnings(beanmail("worker", "--burst", env=env))) == 1  # the default tubes include mail.bulk
    assert _warnings(beanmail("worker", "--burst", "--tubes", "mail.urgent,mail.normal", env=env)) == []
    with_mailto = {**env, "BEANMAIL_UNSUBSCRIBE_MAILTO": "unsubscribe@beanmail.example"}
    assert _warnings(beanmail("worker", "--burst", "--tubes", "mail.bulk", env=with_mailto)) == []
    with_url = {**env, "BEANMAIL_UNSUBSCRIBE_URL": "https://app.example/unsubscribe",
                "BEANMAIL_UNSUBSCRIBE_SECRET": "s3cret"}
    assert _warnings(beanmail("worker", "--burst", "--tubes", "mail.bulk", env=with_url)) == []


# -- the catcher ------------------------------------------------------------------------------------------

def other_local_addresses() -> list[str]:
    """Addresses of this machine other than 127.0.0.1: another loopback address, and every IPv4
    address of its interfaces."""
    out = subprocess.run([which("ip"), "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    found = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    return ["127.0.0.2", *[a for a in found if not a.startswith("127.")]]


@pytest.mark.server
def test_the_catcher_listens_on_loopback_only(tmp_path: Path) -> None:
    server = Maildev(tmp_path).start()
    try:
        assert port_open("127.0.0.1", server.web_port) and port_open("127.0.0.1", server.smtp_port)
        others = other_local_addresses()
        reachable = [(a, p) for a in others for p in (server.web_port, server.smtp_port) if port_open(a, p)]
    finally:
        server.stop()
    assert reachable == []
    # the development stack starts it with the same binding
    devstack = (ROOT / "scripts" / "devstack.sh").read_text()
    assert re.search(r"maildev\" --ip 127\.0\.0\.1 --web-ip 127\.0\.0\.1 ", devstack)
