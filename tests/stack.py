"""The production layout under test: the repository's own supervisord.conf, run by a real
supervisord in a scratch folder, against the tests' beanstalkd and SMTP server."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .servers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tracked(folder: str) -> list[str]:
    """The files a clone of the repository has under ``folder`` (what git tracks, nothing made
    by running it)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", folder], capture_output=True,
                         check=True, timeout=30).stdout.decode()
    return [p for p in out.split("\0") if p]


class Supervisor:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        """``home`` is laid out like a fresh clone: the repository's supervisord.conf, the tracked
        files of var/ and nothing else there (no log folder made for it), a link to the venv."""
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "supervisord.conf", home / "supervisord.conf")
        (home / ".venv").symlink_to(ROOT / ".venv")
        for path in tracked("var"):
            (home / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, home / path)
        self.conf = str(home / "supervisord.conf")
        self.web_port = free_port()  # the console program: never the default port a dev stack holds
        self.env = {**env, "BEANMAIL_TEMPLATES": str(ROOT / "templates"),
                    "BEANMAIL_SUPERVISOR_URL": f"unix://{home}/var/supervisor.sock",
                    "BEANMAIL_WEB_LISTEN": f"127.0.0.1:{self.web_port}"}

    def start(self) -> "Supervisor":
        subprocess.run([str(BIN / "supervisord"), "-c", self.conf], env=self.env, check=True, timeout=30)
        self.wait_running()
        return self

    def ctl(self, *args: str, check: bool = False) -> str:
        proc = subprocess.run([str(BIN / "supervisorctl"), "-c", self.conf, *args], env=self.env,
                              capture_output=True, text=True, timeout=200)
        if check and proc.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def states(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                m = re.search(r"pid (\d+)", line)
                out[parts[0]] = (parts[1], int(m.group(1)) if m else 0)
        return out

    def expected(self) -> dict[str, int]:
        """How many processes each program of the file runs (its numprocs, resolved as
        supervisord would from the environment)."""
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
        parser.read(self.conf)
        counts: dict[str, int] = {}
        for section in parser.sections():
            if section.startswith("program:"):
                value = parser.get(section, "numprocs", fallback="1")
                value = re.sub(r"%\(ENV_(\w+)\)s", lambda m: self.env[m.group(1)], value)
                counts[section.removeprefix("program:")] = int(value)
        return counts

    def wait_running(self, timeout: float = 30) -> dict[str, tuple[str, int]]:
        total = sum(self.expected().values())

        def all_running() -> dict[str, tuple[str, int]] | None:
            states = self.states()
            ok = len(states) == total and all(s == "RUNNING" for s, _ in states.values())
            return states if ok else None
        return wait_until(all_running, timeout, "every process RUNNING")  # type: ignore[return-value]

    def log(self, name: str = "supervisord") -> str:
        return (self.home / "var" / "log" / f"{name}.log").read_text()

    def events(self, process: str) -> list[dict]:
        return [json.loads(line) for line in self.log(process).splitlines() if line.startswith("{")]

    def all_events(self) -> list[dict]:
        events: list[dict] = []
        for path in sorted((self.home / "var" / "log").glob("*_0*.log")):
            events += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        return events

    def shutdown(self) -> None:
        pidfile = self.home / "var" / "supervisord.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text())
        self.ctl("shutdown")

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, 200, "supervisord to exit")
