"""docs/operations.md's samples are what the commands print: every fenced block of `$ beanmail`
commands in it is run here, in the document's order, against real servers set up as its story
says (job 1 sent, jobs 2-4 buried as poison, job 5 buried then deleted), and each printed line
and exit status is compared with the sample. Times, ports, pids and temporary paths are the only
things allowed to differ; a sample line `...` stands for any lines. Change a command's output and
this test names the sample to update."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import greenstalk
import pytest

from producer import Notifier
from worker.settings import Settings

from .conftest import ROOT, bare_env, beanmail
from .servers import Beanstalkd, SmtpServer, wait_until
from .stack import Supervisor

DOC = ROOT / "docs" / "operations.md"
# sections that show the dev stack under supervisord; the rest run against servers and a burst worker
STACK_SECTIONS = {"status", "doctor"}

_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?"), "<time>"),
    (re.compile(r'"updated_at": [\d.]+'), '"updated_at": <time>'),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"pid \d+, uptime [\d:]+"), "pid <pid>, uptime <uptime>"),
    (re.compile(r"^( +age:) \d+$"), r"\1 <n>"),
    (re.compile(r"(/tmp/\S+?/stack|/srv/beanmail)/"), "<home>/"),  # the stack's folder; the doc says /srv/beanmail
    (re.compile(r"/tmp/\S*?/var/"), "<tmp>/var/"),
    (re.compile(r"(version) [\d.]+"), r"\1 <v>"),
]


@dataclass
class Sample:
    section: str
    command: str
    output: list[str] = field(default_factory=list)
    exit: int | None = 0  # None: not said (the sample ends with "...")


def samples() -> list[Sample]:
    """The `$ ` commands of docs/operations.md's fenced blocks, with what each is shown printing."""
    found: list[Sample] = []
    section, inside = "", False
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0]
        elif line.startswith("```"):
            inside = not inside
        elif inside and line.startswith("$ "):
            found.append(Sample(section, line[2:]))
        elif inside and found and found[-1].section == section and re.fullmatch(r"\[exit \d+\]", line):
            found[-1].exit = int(line[6:-1])
        elif inside and found and found[-1].section == section:
            found[-1].output.append(line)
    for s in found:
        if s.output and s.output[-1].strip() == "..." and s.exit == 0:
            s.exit = None
    return [s for s in found if _runs_beanmail(s.command)]


def _runs_beanmail(command: str) -> bool:
    return "beanmail" in shlex.split(command, comments=True)


def _normal(line: str) -> str:
    for rx, to in _VOLATILE:
        line = rx.sub(to, line)
    return line.rstrip()


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line after _normal; a `...` line matches any run of lines (none too)."""
    exp = [_normal(x) for x in expected]
    act = [_normal(x) for x in actual]

    def go(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i].strip() == "...":
            return any(go(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and exp[i] == act[j] and go(i + 1, j + 1)
    return go(0, 0)


def _run(sample: Sample, env: dict[str, str], cwd: Path) -> tuple[list[str], int]:
    """The sample's command line as a shell runs it (its `VAR=value` prefixes, pipes, comments)."""
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", sample.command], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    return (proc.stdout + proc.stderr).splitlines(), proc.returncode


def _check(sample: Sample, env: dict[str, str], cwd: Path) -> None:
    printed, code = _run(sample, env, cwd)
    shown = "\n".join(printed)
    assert _matches(sample.output, printed), (
        f"docs/operations.md, section {sample.section!r}: `$ {sample.command}` prints\n{shown}\n"
        f"[exit {code}]\nbut the sample shows\n" + "\n".join(sample.output))
    if sample.exit is not None:
        assert code == sample.exit, f"`$ {sample.command}` exits {code}, the sample says {sample.exit}:\n{shown}"


def test_the_documents_story_has_samples_to_check() -> None:
    sections = {s.section for s in samples()}
    assert {"status", "doctor", "buried", "peek", "kick", "delete", "pause", "log", "suppress"} <= sections


def _the_story(settings: Settings) -> None:
    """Job 1 sent to Zoë; 2-4 buried as poison (an empty envelope, an unknown template, a body
    that is not JSON); 5 buried and deleted, so only the store remembers it."""
    notifier = Notifier(settings.beanstalk_url)
    notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, key="welcome:zoe")
    with greenstalk.Client(_address(settings.beanstalk_url), use="mail.bulk", encoding=None) as c:
        c.put(b"{}")
    notifier.notify("nope", "ann@example.com", {}, key="nope:ann", priority="bulk")
    notifier.close()
    with greenstalk.Client(_address(settings.beanstalk_url), use="mail.normal", encoding=None) as c:
        c.put(b"not json")
        c.put(b"not json either")


def _schedule_news(settings: Settings) -> None:
    """A mailout to two for three days ahead (the document shows a Monday 08:00)."""
    notifier = Notifier(settings.beanstalk_url, blobs=settings.store)
    notifier.mailout("welcome", ["ann@example.com", "bob@example.com"], {"name": "all"}, key="news:1",
                     send_at=time.time() + 3 * 86400)
    notifier.close()


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_every_cli_sample_is_what_the_command_prints(settings: Settings, tmp_path: Path) -> None:
    env = bare_env(settings)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "not-a-store").write_bytes(b"\x8f garbage, not a database " * 40)
    _the_story(settings)
    beanmail("worker", "--burst", env=env)
    with greenstalk.Client(_address(settings.beanstalk_url), encoding=None) as c:
        c.delete(5)
    # as a running worker would, keep the tubes in existence once they are empty
    watcher = greenstalk.Client(_address(settings.beanstalk_url), watch=["mail.bulk", "mail.normal"])
    checked = 0
    try:
        for sample in samples():
            if sample.section in STACK_SECTIONS:
                continue
            if sample.section == "delete" and sample.command.startswith("beanmail delete --job"):
                beanmail("worker", "--burst", env=env)  # the jobs `kick` moved are poison: buried again
            if sample.section == "mailout" and sample.command == "beanmail mailout list":
                _schedule_news(settings)
            _check(sample, env, tmp_path)
            checked += 1
    finally:
        watcher.close()
    assert checked >= 20


def test_status_and_doctor_samples_are_what_the_dev_stack_prints(beanstalkd: Beanstalkd, smtp: SmtpServer,
                                                                  tmp_path: Path) -> None:
    env = bare_env(None, BEANMAIL_BEANSTALK_URL=beanstalkd.url, BEANMAIL_SMTP_URL=smtp.url,
                   BEANMAIL_STORE="var/beanmail.sqlite3", BEANMAIL_FROM="Tests <noreply@beanmail.example>")
    stack = Supervisor(tmp_path / "stack", env).start()
    try:
        first = next(s for s in samples() if s.section == "status")
        # right after the start, once every worker watches its tubes
        wait_until(lambda: _matches(first.output, _run(first, stack.env, stack.home)[0]), 60,
                   "status to show the started stack as the sample does")
        for sample in (s for s in samples() if s.section in STACK_SECTIONS):
            _check(sample, stack.env, stack.home)
    finally:
        stack.shutdown()


@pytest.mark.unit
def test_a_changed_line_is_caught_and_volatile_figures_are_not() -> None:
    assert _matches(["a 2026-11-23 03:42:29 pid 12, uptime 0:00:45", "..."], ["a 1999-01-01 00:00:00 pid 9, uptime 1:02:03"])
    assert not _matches(["mail.bulk: kicked 1"], ["mail.bulk: kicked 2"])
    assert not _matches(["one"], ["one", "two"])
