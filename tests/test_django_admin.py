"""The editor's button: `producer.django.admin.mailout_action` through Django's test client in
tests/admin_site (its own process: Django is configured once per process), against a real
beanstalkd, and once with real `beanmail fanout` and `beanmail worker` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from producer import envelope as env
from producer.client import connect
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, VENV_BIN, bare_env
from .servers import SmtpServer

SITE = ROOT / "tests" / "admin_site"


def run_site_tests(settings: Settings, tmp_path: Path, *names: str, **extra: str) -> dict:
    Store(settings.store).close()  # the workers' store exists before the web app starts (it never creates one)
    result = tmp_path / "admin-result.json"
    env = bare_env(settings, ADMIN_RESULT=str(result), **extra)
    proc = subprocess.run([sys.executable, "manage.py", "test", "-v", "2", *names], cwd=SITE, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(result.read_text()) if result.exists() else {}


def test_send_email_update_confirms_then_queues_one_mailout_and_shows_its_progress(settings: Settings,
                                                                                   tmp_path: Path) -> None:
    """No worker runs: the page answers with the mailout queued (one chunk on `mailout`), the
    progress page says 3 left; the confirmation page and permissions behave as an admin should."""
    done = run_site_tests(settings, tmp_path, "newsroom")
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.watch(env.MAILOUT_TUBE)
        job = c.reserve(2)
        chunk = env.decode(job.body)
        assert int(c.stats_tube(env.MAILOUT_TUBE)["total-jobs"]) == 1  # one mailout, one chunk
    assert chunk.id == f"{done['key']}#0" and chunk.template == "update" and chunk.priority == "bulk"
    assert [(r.address, r.name) for r in chunk.to] == [("ana@example.com", "Ana"), ("ben@example.com", "Ben"),
                                                       ("cy@example.com", "Cy")]
    assert sorted(o["title"] for o in chunk.context["objects"]) == ["Dark mode", "Faster search"]


def test_send_email_update_progress_moves_to_sent_with_a_real_worker(settings: Settings, smtp: SmtpServer,
                                                                     tmp_path: Path) -> None:
    procs = [subprocess.Popen([str(VENV_BIN / "beanmail"), *args], env=bare_env(settings), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for args in (["fanout"], ["worker", "--tubes", "mail.bulk"])]
    try:
        run_site_tests(settings, tmp_path, "newsroom.tests.SendEmailUpdate.test_confirm_then_one_mailout_and_its_progress",
                       WITH_WORKER="1")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    got = smtp.wait_for(3)
    assert sorted(m.rcpt_tos[0] for m in got) == ["ana@example.com", "ben@example.com", "cy@example.com"]
    assert {m.message["Subject"] for m in got} == {"News on 2 issues"}
