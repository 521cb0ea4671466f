"""Health that tells the truth: `beanmail status` exits 1 and /healthz answers 503, each saying
why, whenever mail cannot go out — not only when beanstalkd is down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from producer import Notifier
from worker.settings import Settings

from .conftest import bare_env, beanmail, running_worker
from .servers import Beanstalkd, SmtpServer, free_port, wait_until
from .test_web import start_console, stop_console


def status(env: dict[str, str]) -> tuple[int, dict]:
    proc = beanmail("status", "--json", env=env, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_a_relay_refusing_every_connection_is_unhealthy(settings: Settings, beanstalkd: Beanstalkd,
                                                        smtp: SmtpServer) -> None:
    env = bare_env(settings)
    assert status(env)[0] == 0
    closed = f"smtp://127.0.0.1:{free_port()}"
    code, report = status(bare_env(settings, BEANMAIL_SMTP_URL=closed))
    assert code == 1 and report["healthy"] is False
    assert [p for p in report["problems"] if p.startswith("relay: cannot connect to 127.0.0.1:")], report["problems"]
    text = beanmail("status", env=bare_env(settings, BEANMAIL_SMTP_URL=closed), check=False).stdout
    assert "UNHEALTHY:" in text and "relay: cannot connect" in text
    console = start_console(settings.replace(smtp_url=closed))
    try:
        code_, _, body = console.get("/healthz")
        assert code_ == 503 and body.startswith("relay: cannot connect to 127.0.0.1:")
    finally:
        stop_console(console)


def test_ready_mail_no_worker_watches_is_unhealthy_until_a_worker_runs(settings: Settings, notifier: Notifier,
                                                                      smtp: SmtpServer) -> None:
    env = bare_env(settings)
    notifier.notify("password_reset", "ana@example.com", {"reset_url": "https://x.example/r"},
                    priority="urgent", key="reset:ana")
    code, report = status(env)
    assert code == 1 and report["problems"] == ["no worker watches mail.urgent: 1 job(s) ready"]
    console = start_console(settings)
    try:
        assert console.get("/healthz")[:3:2] == (503, "no worker watches mail.urgent: 1 job(s) ready\n")
        with running_worker(settings):
            smtp.wait_for(1)
            wait_until(lambda: status(env)[0] == 0, 15, "status healthy with the mail sent")
            assert console.get("/healthz")[:3:2] == (200, "ok\n")
    finally:
        stop_console(console)


def test_urgent_mail_waiting_past_the_limit_is_unhealthy(settings: Settings, notifier: Notifier,
                                                         smtp: SmtpServer) -> None:
    # a retry waiting out a delay (as after a relay outage): delayed, not ready, so watched or not
    notifier.notify("password_reset", "ana@example.com", {"reset_url": "https://x.example/r"},
                    priority="urgent", key="reset:late", delay=3600)
    env = bare_env(settings, BEANMAIL_URGENT_MAX_AGE="1")
    report = wait_until(lambda: (r := status(env))[0] == 1 and r[1], 10, "the urgent job older than 1 s")
    assert report["problems"] == [report["problems"][0]] and report["problems"][0].startswith(
        "the oldest urgent job has waited ") and "(BEANMAIL_URGENT_MAX_AGE 1 s)" in report["problems"][0]
    assert status(bare_env(settings))[0] == 0  # the default, 60 s, is not reached


def test_direct_mx_with_a_dns_server_that_does_not_answer_is_unhealthy(settings: Settings,
                                                                      beanstalkd: Beanstalkd,
                                                                      tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, answers none
    silent.bind(("127.0.0.1", 0))
    try:
        env = bare_env(settings, BEANMAIL_TRANSPORT="mx", BEANMAIL_DNS=f"127.0.0.1:{silent.getsockname()[1]}",
                       BEANMAIL_DNS_TIMEOUT="1")
        code, report = status(env)
        assert code == 1 and len(report["problems"]) == 1
        assert report["problems"][0].startswith(f"DNS: 127.0.0.1:{silent.getsockname()[1]} does not answer")
    finally:
        silent.close()


def test_a_job_put_on_the_default_tube_is_shown_and_unhealthy(settings: Settings, beanstalkd: Beanstalkd,
                                                              smtp: SmtpServer) -> None:
    """A PHP or Ruby producer that forgot `useTube`: its jobs wait on `default`, which nothing watches."""
    from producer.client import connect

    env = bare_env(settings)
    assert "default" not in [t["tube"] for t in status(env)[1]["tubes"]]
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.put(b'{"v": 2}')
    code, report = status(env)
    assert code == 1 and [t["ready"] for t in report["tubes"] if t["tube"] == "default"] == [1]
    assert report["problems"] == ["no worker watches default: 1 job(s) ready"]


def test_the_brake_says_it_judges_nothing_without_a_return_path(settings: Settings, beanstalkd: Beanstalkd,
                                                                smtp: SmtpServer) -> None:
    """No bounce or complaint can come back without a return path (or a provider's webhooks):
    "0 bulk sent, 0 bounced" would read as healthy when nothing was measured."""
    text = beanmail("status", env=bare_env(settings)).stdout
    assert "brake: not judged: no return path" in text and "brake: off" not in text
    judged = beanmail("status", env=bare_env(settings, BEANMAIL_RETURN_PATH="bounces@beanmail.example",
                                             BEANMAIL_SECRET="s")).stdout
    assert "brake: off (0 bulk sent" in judged
