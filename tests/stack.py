"""The production layout under test: the repository's own supervisord.conf, run by a real
supervisord in a scratch folder, against the tests' beanstalkd and SMTP server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .servers import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Supervisor:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "supervisord.conf", home / "supervisord.conf")
        (home / ".venv").symlink_to(ROOT / ".venv")
        (home / "var" / "log").mkdir(parents=True)
        self.conf = str(home / "supervisord.conf")
        self.env = {**env, "BEANMAIL_TEMPLATES": str(ROOT / "templates"),
                    "BEANMAIL_SUPERVISOR_URL": f"unix://{home}/var/supervisor.sock"}

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

    def wait_running(self, timeout: float = 30) -> dict[str, tuple[str, int]]:
        def all_running() -> dict[str, tuple[str, int]] | None:
            states = self.states()
            ok = len(states) == int(self.env["BEANMAIL_WORKERS"]) + 2 and all(s == "RUNNING" for s, _ in states.values())
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
