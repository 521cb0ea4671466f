"""The Prometheus alert rules shipped in docs/alerts/ load, and fire on the series that mean
each condition and on nothing else (promtool's own rule tests, Debian's prometheus package)."""

from __future__ import annotations

import shutil
import subprocess

from worker.settings import Settings

from .conftest import ROOT
from .servers import Beanstalkd, SmtpServer

ALERTS = ROOT / "docs" / "alerts"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/setup.sh test installs Debian's prometheus package"
    return subprocess.run([tool, *args], cwd=ALERTS, capture_output=True, text=True, timeout=60)


def test_the_alert_rules_load_and_fire_as_their_tests_say() -> None:
    checked = promtool("check", "rules", "beanmail.rules.yml")
    assert checked.returncode == 0 and "SUCCESS: 5 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "beanmail.rules.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_series_the_rules_read_is_one_the_console_exports(settings: Settings, beanstalkd: Beanstalkd,
                                                               smtp: SmtpServer) -> None:
    import re

    from producer.client import connect

    from .servers import free_port
    from .test_web import start_console, stop_console

    with connect(settings.beanstalk_url, encoding=None) as c:  # a tube with ready mail and no worker
        c.use("mail.normal")
        c.put(b"{}")
    used = set(re.findall(r"\b(beanmail_[a-z_]+)", (ALERTS / "beanmail.rules.yml").read_text()))
    console = start_console(settings)
    try:
        text = console.get("/metrics")[2]
    finally:
        stop_console(console)
    exported = set(re.findall(r"^(beanmail_[a-z_]+)", text, re.M))
    assert used <= exported, used - exported
    assert "beanmail_healthy 0.0" in text  # mail.normal holds ready mail that no worker watches
    assert 'beanmail_tube_watchers{tube="mail.normal"} 0.0' in text
    down = start_console(settings.replace(smtp_url=f"smtp://127.0.0.1:{free_port()}"))
    try:
        assert "beanmail_healthy 0.0" in down.get("/metrics")[2]
    finally:
        stop_console(down)
