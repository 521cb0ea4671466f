"""Producer -> real beanstalkd -> worker -> real SMTP server, one outcome row at a time."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from producer import Notifier
from producer.client import connect
from worker.settings import Settings
from worker.store import Store

from .conftest import bare_env, beanmail, job_state, run_burst, running_worker
from .servers import Beanstalkd, SmtpServer


def store(settings: Settings) -> Store:
    return Store(settings.store)


def test_notify_is_delivered_with_subject_text_and_escaped_html(settings: Settings, notifier: Notifier,
                                                                smtp: SmtpServer) -> None:
    job = notifier.notify("welcome", "Zoë Ünicode <zoe@example.com>",
                          {"name": "Zoë <script>alert(1)</script>", "site": "Acme & Co"},
                          priority="urgent", key="welcome:42")
    run_burst(settings)
    [received] = smtp.wait_for(1)
    msg = received.message
    assert received.rcpt_tos == ["zoe@example.com"]
    assert received.mail_from == "noreply@beanmail.example"
    assert msg["Subject"] == "Welcome to Acme & Co, Zoë <script>alert(1)</script>!"
    assert msg["To"].addresses[0].display_name == "Zoë Ünicode"
    assert msg["Message-ID"] and msg["Date"] and msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hello Zoë <script>alert(1)</script>," in text  # the text part is not HTML-escaped
    assert "Zoë &lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "Acme &amp; Co" in html
    assert job_state(settings, job) is None  # deleted
    [row] = store(settings).deliveries(key="welcome:42")
    assert (row.outcome, row.recipient) == ("sent", "zoe@example.com")
    assert row.reply.startswith("250")


def test_template_without_html_gives_a_single_text_part(settings: Settings, notifier: Notifier,
                                                        smtp: SmtpServer) -> None:
    notifier.notify("password_reset", "a@example.com", {"reset_url": "https://x.example/r/1"})
    run_burst(settings)
    msg = smtp.wait_for(1)[0].message
    assert msg.get_content_type() == "text/plain"
    assert "https://x.example/r/1" in msg.get_content()


def test_priorities_go_to_their_tubes_and_urgent_is_reserved_first(settings: Settings, notifier: Notifier,
                                                                   smtp: SmtpServer) -> None:
    for i in range(3):
        notifier.notify("welcome", f"bulk{i}@example.com", {"name": "b"}, priority="bulk")
    notifier.notify("welcome", "normal@example.com", {"name": "n"})
    notifier.notify("welcome", "urgent@example.com", {"name": "u"}, priority="urgent")
    with connect(settings.beanstalk_url, encoding=None) as c:
        counts = {t: c.stats_tube(t)["current-jobs-ready"] for t in ("mail.urgent", "mail.normal", "mail.bulk")}
    assert counts == {"mail.urgent": 1, "mail.normal": 1, "mail.bulk": 3}
    run_burst(settings)
    order = [m.rcpt_tos[0] for m in smtp.wait_for(5)]
    assert order[:2] == ["urgent@example.com", "normal@example.com"]


def poison_ids(settings: Settings) -> dict[int, str]:
    db = sqlite3.connect(settings.store)
    return dict(db.execute("SELECT job_id, reason FROM failures WHERE outcome = 'poison'").fetchall())


def put_raw(settings: Settings, body: bytes, tube: str = "mail.normal") -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use(tube)
        return c.put(body)


def envelope(**kw: object) -> bytes:
    obj = {"v": 1, "kind": "mail", "id": f"k{time.monotonic_ns()}", "template": "welcome",
           "to": {"address": "zoe@example.com"}, "context": {"name": "Zoë"}}
    obj.update(kw)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("body, reason", [
    (b"\x00\xff\xfe\x80 garbage", "not UTF-8"),
    (b'{"hello": "world"}', "unknown field"),
    (b'["v", 1]', "JSON object"),
    (envelope(template="no_such_template"), "unknown template 'no_such_template'"),
    (envelope(context={}), "'name' is undefined"),
    (envelope(to={"address": "zoe@example.com", "name": "Zoë\r\nBcc: all@example.com"}), "header injection"),
    (envelope(headers={"Reply-To": "a@b.example\r\nBcc: x@y.example"}), "header injection"),
    (envelope(headers={"Content-Type": "text/evil"}), "may not be set"),
    (envelope(context={"name": "x\nBcc: y@z.example"}), "header injection: Subject"),
    (envelope(to={"address": "not an address"}), "invalid recipient address"),
    (envelope(entities={"u": {"type": "nobody-knows", "id": 1}}), "no resolver"),
])
def test_poison_jobs_are_buried_with_their_reason(settings: Settings, smtp: SmtpServer, body: bytes,
                                                  reason: str) -> None:
    job = put_raw(settings, body)
    good = put_raw(settings, envelope(to={"address": "good@example.com"}))
    worker = run_burst(settings)
    assert worker.processed == 2  # the poison job neither crashed the worker nor looped
    assert job_state(settings, job) == "buried"
    assert job_state(settings, good) is None
    assert reason in poison_ids(settings)[job]
    assert [m.rcpt_tos for m in smtp.messages] == [["good@example.com"]]


def test_bad_signature_is_poison_when_a_secret_is_configured(settings: Settings, smtp: SmtpServer) -> None:
    settings = settings.replace(secret="s3cret")
    forged = Notifier(settings.beanstalk_url, secret="wrong").notify("welcome", "a@example.com", {"name": "x"})
    unsigned = put_raw(settings, envelope())
    signed = Notifier(settings.beanstalk_url, secret="s3cret").notify("welcome", "b@example.com", {"name": "x"})
    run_burst(settings)
    reasons = poison_ids(settings)
    assert "bad signature" in reasons[forged]
    assert "unsigned" in reasons[unsigned]
    assert job_state(settings, signed) is None
    assert [m.rcpt_tos for m in smtp.messages] == [["b@example.com"]]


def test_451_releases_the_job_with_a_backoff_delay(settings: Settings, notifier: Notifier,
                                                   smtp: SmtpServer) -> None:
    job = notifier.notify("welcome", "tempfail@example.com", {"name": "x"}, key="k451")
    run_burst(settings)
    with connect(settings.beanstalk_url, encoding=None) as c:
        stats = c.stats_job(job)
    assert stats["state"] == "delayed" and stats["releases"] == 1
    assert 1 <= stats["delay"] <= settings.backoff_max
    [row] = store(settings).deliveries(key="k451")
    assert row.outcome == "deferred" and row.reply.startswith("451")


def test_deferred_past_the_retry_budget_is_buried_as_exhausted(settings: Settings, notifier: Notifier,
                                                               smtp: SmtpServer) -> None:
    settings = settings.replace(max_attempts=2)
    job = notifier.notify("welcome", "tempfail@example.com", {"name": "x"}, key="kex")
    run_burst(settings)
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.kick_job(job)  # skip the wait: the delay is already proven above
    run_burst(settings)
    assert job_state(settings, job) == "buried"
    db = sqlite3.connect(settings.store)
    [(outcome, reason)] = db.execute("SELECT outcome, reason FROM failures WHERE job_id = ?", (job,)).fetchall()
    assert outcome == "exhausted" and "2 attempts" in reason and "451" in reason


def test_550_ends_the_job_as_bounced_and_suppresses_the_address(settings: Settings, notifier: Notifier,
                                                                smtp: SmtpServer) -> None:
    job = notifier.notify("welcome", "reject@example.com", {"name": "x"}, key="k550")
    run_burst(settings)
    assert job_state(settings, job) is None
    s = store(settings)
    [row] = s.deliveries(key="k550")
    assert row.outcome == "bounced" and row.reply.startswith("550 5.1.1")
    assert s.suppressed("reject@example.com")[0] == "bounce"
    # the next mail to a hard-bounced address is skipped, not tried
    notifier.notify("password_reset", "reject@example.com", {"reset_url": "u"}, priority="urgent", key="k2")
    run_burst(settings)
    assert s.deliveries(key="k2")[0].outcome == "skipped"
    assert smtp.handler.connections == 1


def test_a_policy_refusal_bounces_without_suppressing_the_address(settings: Settings, notifier: Notifier,
                                                                  smtp: SmtpServer) -> None:
    notifier.notify("welcome", "spamtrap@example.com", {"name": "x"}, key="571")
    run_burst(settings)
    s = store(settings)
    assert s.deliveries(key="571")[0].outcome == "bounced"
    assert s.suppressed("spamtrap@example.com") is None  # 5.7.1 says nothing about the address


def test_a_bad_setting_stops_the_worker_at_start_naming_it(settings: Settings) -> None:
    proc = beanmail("worker", "--burst", env=bare_env(settings, BEANMAIL_TRANSPORT="pigeon"), check=False)
    assert proc.returncode == 78
    assert "BEANMAIL_TRANSPORT" in proc.stderr and "pigeon" in proc.stderr


def test_expired_not_after_is_skipped(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    job = notifier.notify("welcome", "a@example.com", {"name": "x"}, not_after=time.time() - 1, key="old")
    run_burst(settings)
    assert job_state(settings, job) is None and smtp.messages == []
    assert "expired" in store(settings).deliveries(key="old")[0].reason


def test_same_key_twice_is_sent_once(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    for _ in range(2):
        notifier.notify("welcome", "a@example.com", {"name": "x"}, key="once")
    run_burst(settings)
    assert len(smtp.messages) == 1
    [row] = store(settings).deliveries(key="once")
    assert row.outcome == "sent"


def test_sql_entities_are_resolved_at_send_time(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                                tmp_path: Path) -> None:
    app_db = tmp_path / "app.sqlite3"
    db = sqlite3.connect(app_db)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users VALUES (42, 'Zoë from the database')")
    db.commit()
    settings = settings.replace(entities={"user": {"database": str(app_db),
                                                   "sql": "SELECT name FROM users WHERE id = ?"}})
    notifier.notify("welcome", "a@example.com", {"name": "inline"}, key="present",
                    entities={"name_holder": {"type": "user", "id": 42}})
    gone = notifier.notify("welcome", "b@example.com", {"name": "x"}, key="gone",
                           entities={"u": {"type": "user", "id": 7}})
    run_burst(settings)
    [msg] = smtp.wait_for(1)
    assert msg.rcpt_tos == ["a@example.com"]
    assert job_state(settings, gone) is None
    [row] = store(settings).deliveries(key="gone")
    assert row.outcome == "skipped" and "entity gone: user 7" in row.reason


def test_entity_store_down_defers(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                  tmp_path: Path) -> None:
    settings = settings.replace(entities={"user": {"database": str(tmp_path / "missing.sqlite3"),
                                                   "sql": "SELECT * FROM users WHERE id = ?"}})
    job = notifier.notify("welcome", "a@example.com", {"name": "x"}, entities={"u": {"type": "user", "id": 1}})
    run_burst(settings)
    assert job_state(settings, job) == "delayed" and smtp.messages == []


def test_worker_reconnects_after_the_smtp_server_restarts(settings: Settings, notifier: Notifier,
                                                          smtp: SmtpServer) -> None:
    s = Store(settings.store)
    with running_worker(settings) as worker:
        notifier.notify("welcome", "a@example.com", {"name": "1"})
        smtp.wait_for(1)
        smtp.stop()  # the worker's kept-alive connection is now dead
        restarted = SmtpServer(port=smtp.port).start()
        try:
            notifier.notify("welcome", "b@example.com", {"name": "2"}, key="after-restart")
            assert [m.rcpt_tos for m in restarted.wait_for(1)] == [["b@example.com"]]
        finally:
            restarted.stop()
    assert worker.stage.transport.session.connects == 2  # one connection per server, reused in between
    [row] = s.deliveries(key="after-restart")
    assert (row.outcome, row.attempts) == ("sent", 1)  # reconnected at once, not deferred


def test_smtp_server_down_defers_and_nothing_is_lost(settings: Settings, notifier: Notifier,
                                                     smtp: SmtpServer) -> None:
    smtp.stop()
    job = notifier.notify("welcome", "a@example.com", {"name": "x"}, key="down")
    run_burst(settings)
    assert job_state(settings, job) == "delayed"
    assert "cannot connect" in store(settings).deliveries(key="down")[0].reason
    smtp.start()
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.kick_job(job)
    run_burst(settings)
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [["a@example.com"]]


def test_cli_worker_under_bare_c_locale_sends_correct_utf8(settings: Settings, smtp: SmtpServer) -> None:
    env = bare_env(settings)
    out = beanmail("enqueue", "welcome", "--to", "Jürgen Größe <jg@example.com>",
                   "--context", json.dumps({"name": "Jürgen 日本"}), "--key", "utf8", env=env)
    assert out.stdout.strip().isdigit()
    proc = beanmail("worker", "--burst", env=env)
    [received] = smtp.wait_for(1)
    received.data.decode("ascii")  # 7-bit clean on the wire: RFC 2047 headers, encoded bodies
    msg = received.message
    assert msg["Subject"] == "Welcome to beanmail, Jürgen 日本!"
    assert msg["To"].addresses[0].display_name == "Jürgen Größe"
    assert "Hello Jürgen 日本," in msg.get_body(("plain",)).get_content()
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    [job_event] = [e for e in events if e["event"] == "job"]
    assert job_event["outcome"] == "sent" and job_event["to"] == ["j***@example.com"]
    assert job_event["template"] == "welcome" and job_event["key"] == "utf8"
    assert "jg@example.com" not in proc.stdout  # masked by default


def test_burst_worker_with_beanstalkd_down_exits_69(settings: Settings, beanstalkd: Beanstalkd) -> None:
    beanstalkd.stop()
    proc = beanmail("worker", "--burst", env=bare_env(settings), check=False)
    assert proc.returncode == 69
    assert "beanstalkd unreachable" in proc.stdout


def test_an_smtp_server_that_never_answers_is_bounded_by_the_timeout(settings: Settings, notifier: Notifier) -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never says 220
    try:
        s = settings.replace(smtp_url=f"smtp://127.0.0.1:{silent.getsockname()[1]}?starttls=off", smtp_timeout=0.5)
        job = notifier.notify("welcome", "a@example.com", {"name": "x"}, key="hung")
        run_burst(s)
    finally:
        silent.close()
    assert job_state(settings, job) == "delayed"
    assert "timed out" in store(settings).deliveries(key="hung")[0].reason


def test_a_store_that_stays_locked_defers_the_job_and_the_worker_goes_on(settings: Settings, notifier: Notifier,
                                                                         smtp: SmtpServer) -> None:
    from worker.loop import Worker
    from worker.pipeline import Pipeline

    store = Store(settings.store, timeout=0.2)
    blocker = sqlite3.connect(settings.store, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another program holding the file, past the timeout
    try:
        job = notifier.notify("welcome", "a@example.com", {"name": "x"}, key="locked")
        worker = Worker(settings, Pipeline(settings, store), store)
        assert worker.run(burst=True) == 0 and worker.processed == 1
    finally:
        blocker.execute("ROLLBACK")
    assert job_state(settings, job) == "delayed" and smtp.messages == []


def test_cli_refuses_a_bad_address_and_status_fails_while_beanstalkd_is_down(settings: Settings,
                                                                            beanstalkd: Beanstalkd) -> None:
    env = bare_env(settings)
    bad = beanmail("enqueue", "welcome", "--to", "Zoë <zoe at example.com>", "--context", "{}", env=env, check=False)
    assert bad.returncode == 1 and "invalid recipient address" in bad.stderr
    assert beanmail("status", env=env).returncode == 0
    beanstalkd.stop()
    down = beanmail("status", "--json", env=env, check=False)
    assert down.returncode == 1 and "unreachable" in json.loads(down.stdout)["beanstalkd"]["error"]
