"""The Prometheus alert rules shipped in docs/alerts/ load, and fire on the series that mean
each condition and on nothing else (promtool's own rule tests, Debian's prometheus package)."""

from __future__ import annotations

import shutil
import subprocess

from .conftest import ROOT

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
