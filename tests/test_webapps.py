"""Web-app hooks: Django, Flask, plain WSGI with DB-API, PHP; producer resilience; the catcher."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from producer import EnqueueError, Notifier
from producer.catcher import Catcher
from producer.client import connect
from producer.envelope import VERSION
from worker.settings import Settings

from .conftest import ROOT, bare_env, beanmail, run_burst
from .servers import Beanstalkd, Maildev, SmtpServer
from .stack import Supervisor


def ready(settings: Settings) -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return sum(int(c.stats_tube(t)["current-jobs-ready"]) for t in c.tubes())


# -- PHP ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("secret", ["", "php-and-python-agree"])
def test_the_php_example_enqueues_what_the_worker_delivers(settings: Settings, beanstalkd: Beanstalkd,
                                                           smtp: SmtpServer, secret: str) -> None:
    settings = settings.replace(secret=secret)
    out = subprocess.run(["php", str(ROOT / "examples/php/enqueue.php"), "127.0.0.1", str(beanstalkd.port),
                          "welcome", "zoe@example.com", "Zoë Ünicode", json.dumps({"name": "Zoë/PHP"}), secret],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip().isdigit()
    run_burst(settings)
    msg = smtp.wait_for(1)[0].message
    assert msg["Subject"] == "Welcome to beanmail, Zoë/PHP!"
    assert msg["To"].addresses[0].display_name == "Zoë Ünicode"


# -- Django ---------------------------------------------------------------------------------------

@pytest.fixture
def django_app(settings: Settings) -> Iterator[None]:
    import django
    from django.conf import settings as dj

    if not dj.configured:
        dj.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
                     EMAIL_BACKEND="producer.django.EmailBackend", DEFAULT_FROM_EMAIL="app@beanmail.example",
                     INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    import producer.django

    dj.BEANMAIL = {"URL": settings.beanstalk_url}
    producer.django._notifier = None
    yield
    producer.django._notifier = None


def test_django_send_mail_becomes_a_job_after_commit_with_attachments(django_app: None, settings: Settings,
                                                                      smtp: SmtpServer) -> None:
    from django.core.mail import EmailMessage as DjangoEmail
    from django.db import transaction

    with transaction.atomic():
        mail = DjangoEmail("Ihre Rechnung – Nr. 7", "Grüße,\nim Anhang.", to=["Zoë <zoe@example.com>"],
                           cc=["cc@example.com"])
        mail.attach("rechnung.txt", "Summe: 12 €", "text/plain")
        assert mail.send() == 1
        assert ready(settings) == 0  # nothing leaves before the commit
    assert ready(settings) == 1
    run_burst(settings)
    [received] = smtp.wait_for(1)
    assert sorted(received.rcpt_tos) == ["cc@example.com", "zoe@example.com"]
    msg = received.message
    assert msg["Subject"] == "Ihre Rechnung – Nr. 7"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "rechnung.txt" and attachment.get_content() == "Summe: 12 €"
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")


def test_django_rollback_sends_nothing_and_notify_on_commit(django_app: None, settings: Settings,
                                                            smtp: SmtpServer) -> None:
    from django.core.mail import send_mail
    from django.db import transaction

    from producer.django import notify_on_commit

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            send_mail("never", "body", None, ["a@example.com"])
            notify_on_commit("welcome", "b@example.com", {"name": "never"})
            raise RuntimeError("the view failed")
    assert ready(settings) == 0
    with transaction.atomic():
        notify_on_commit("welcome", "b@example.com", {"name": "Bea"}, key="signup:b")
    run_burst(settings)
    assert smtp.wait_for(1)[0].message["Subject"] == "Welcome to beanmail, Bea!"


# -- Flask ----------------------------------------------------------------------------------------

def test_flask_extension_enqueues_when_the_request_succeeds_only(settings: Settings, smtp: SmtpServer) -> None:
    from flask import Flask

    from producer.flask import Beanmail

    app = Flask(__name__)
    app.config["BEANMAIL_URL"] = settings.beanstalk_url
    beanmail = Beanmail(app)
    seen: list[int] = []

    @app.post("/signup")
    def signup() -> str:
        beanmail.notify("welcome", "zoe@example.com", {"name": "Zoë"}, key="signup:zoe")
        seen.append(ready(settings))
        return "ok"

    @app.post("/broken")
    def broken() -> str:
        beanmail.notify("welcome", "x@example.com", {"name": "x"})
        raise RuntimeError("boom")

    client = app.test_client()
    assert client.post("/signup").status_code == 200
    assert seen == [0] and ready(settings) == 1  # enqueued at the end of the request
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.post("/broken").status_code == 500
    assert ready(settings) == 1
    run_burst(settings)
    assert [m.rcpt_tos for m in smtp.messages] == [["zoe@example.com"]]


# -- producer resilience --------------------------------------------------------------------------

def test_unreachable_beanstalkd_raises_a_clear_error_by_default(settings: Settings, beanstalkd: Beanstalkd) -> None:
    beanstalkd.stop()
    with pytest.raises(EnqueueError, match=f"no beanstalkd server took the job: {settings.beanstalk_url} is unreachable"):
        Notifier(settings.beanstalk_url).notify("welcome", "a@example.com", {"name": "x"})


def test_spooled_jobs_survive_an_outage_and_are_flushed(settings: Settings, beanstalkd: Beanstalkd,
                                                        smtp: SmtpServer, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool" / "beanmail.spool")
    notifier = Notifier(settings.beanstalk_url, spool=spool)
    beanstalkd.stop()
    assert notifier.notify("welcome", "a@example.com", {"name": "A"}, key="spooled:a") == 0
    assert notifier.notify("welcome", "b@example.com", {"name": "B"}, key="spooled:b") == 0
    assert len(Path(spool).read_text().splitlines()) == 2
    env = bare_env(settings, BEANMAIL_SPOOL=spool)
    failed = beanmail("spool", "flush", env=env, check=False)
    assert failed.returncode == 1 and "spool kept for later" in failed.stderr
    beanstalkd.start()
    assert notifier.notify("welcome", "c@example.com", {"name": "C"}) > 0  # reconnects by itself
    assert beanmail("spool", "flush", env=env).stdout.startswith("flushed 2 job(s)")
    assert not Path(spool).exists()
    beanmail("worker", "--burst", env=env)
    assert sorted(m.rcpt_tos[0] for m in smtp.wait_for(3)) == ["a@example.com", "b@example.com", "c@example.com"]


def test_a_worker_flushes_the_spool_when_it_starts(settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer,
                                                   tmp_path: Path) -> None:
    spool = str(tmp_path / "beanmail.spool")
    beanstalkd.stop()
    Notifier(settings.beanstalk_url, spool=spool).notify("welcome", "a@example.com", {"name": "A"})
    beanstalkd.start()
    proc = beanmail("worker", "--burst", env=bare_env(settings, BEANMAIL_SPOOL=spool))
    assert '"spool flushed"' in proc.stdout
    assert [m.rcpt_tos for m in smtp.wait_for(1)] == [["a@example.com"]]


def test_one_notifier_is_safe_from_many_threads(settings: Settings) -> None:
    notifier = Notifier(settings.beanstalk_url)
    ids: list[int] = []

    def hook(n: int) -> None:
        for i in range(50):
            ids.append(notifier.notify("welcome", f"t{n}-{i}@example.com", {"name": "x"},
                                       priority=("urgent", "normal", "bulk")[i % 3]))
    threads = [threading.Thread(target=hook, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 400 and ready(settings) == 400
    with connect(settings.beanstalk_url, encoding=None) as c:
        for tube in ("mail.urgent", "mail.normal", "mail.bulk"):
            c.watch(tube)
        bodies = [json.loads(c.reserve(0).body) for _ in range(400)]
    assert all(b["v"] == VERSION for b in bodies)  # no interleaved, torn puts


# -- the catcher and the example application, end to end ---------------------------------------

@pytest.fixture
def maildev(tmp_path: Path) -> Iterator[Maildev]:
    server = Maildev(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def tracker(beanstalkd: Beanstalkd, tmp_path: Path) -> Iterator[str]:
    from examples.tracker.app import Tracker

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass
    server = make_server("127.0.0.1", 0, Tracker(str(tmp_path / "tracker.sqlite3"), Notifier(beanstalkd.url)),
                         handler_class=Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_comment_in_the_example_app_reaches_the_watchers_in_the_catcher(
        beanstalkd: Beanstalkd, maildev: Maildev, tracker: str, tmp_path: Path) -> None:
    env = bare_env(None, BEANMAIL_WORKERS="1", BEANMAIL_BEANSTALK_URL=beanstalkd.url,
                   BEANMAIL_SMTP_URL=maildev.smtp_url, BEANMAIL_STORE=str(tmp_path / "store.sqlite3"),
                   BEANMAIL_FROM="Tracker <tracker@beanmail.example>")
    stack = Supervisor(tmp_path / "stack", env).start()
    try:
        form = urllib.parse.urlencode({"author": "bob@example.com", "body": "Fixed in <b>1.2</b> – ü"}).encode()
        with urllib.request.urlopen(f"{tracker}/issues/1/comments", data=form, timeout=10) as resp:
            assert resp.status == 200 and "Fixed in &lt;b&gt;1.2&lt;/b&gt;" in resp.read().decode()
        catcher = Catcher(maildev.web_url)
        mails = {m["To"].addresses[0].addr_spec: m for m in catcher.wait_for(2, timeout=30)}
    finally:
        stack.shutdown()
    assert catcher.flavour == "maildev"
    assert set(mails) == {"ann@example.com", "cat@example.com"}  # every watcher but the commenter
    ann = mails["ann@example.com"]
    assert ann["Subject"] == "[#1] Login fails with a ü in the password: new comment by bob@example.com"
    assert ann["To"].addresses[0].display_name == "Ann Müller"
    assert ann["From"].addresses[0].addr_spec == "tracker@beanmail.example"
    assert ann["Auto-Submitted"] == "auto-generated" and ann["Message-ID"]
    assert "Fixed in <b>1.2</b> – ü" in ann.get_body(("plain",)).get_content()
    assert "Fixed in &lt;b&gt;1.2&lt;/b&gt; – ü" in ann.get_body(("html",)).get_content()


class _MailCatcherAPI(BaseHTTPRequestHandler):
    """MailCatcher's documented routes (/messages, /messages/:id.source), serving fixed mail: a
    stand-in for the Ruby gem, which no package registry here carries."""

    sources = {1: b"Subject: one\r\nTo: a@example.com\r\n\r\nfirst\r\n", 2: b"Subject: two\r\n\r\nsecond\r\n"}

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/api/email":
            self.send_error(404)
            return
        if self.path == "/messages":
            body = json.dumps([{"id": i, "subject": "", "recipients": []} for i in self.sources]).encode()
        elif self.path.endswith(".source"):
            body = self.sources[int(self.path.split("/")[2].split(".")[0])]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_catcher_helper_speaks_mailcatcher_too() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MailCatcherAPI)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        catcher = Catcher(f"http://127.0.0.1:{server.server_port}")
        messages: list[EmailMessage] = catcher.wait_for(2, timeout=5)
    finally:
        server.shutdown()
    assert catcher.flavour == "mailcatcher"
    assert [m["Subject"] for m in messages] == ["one", "two"]
    assert messages[0].get_content() == "first\r\n" or messages[0].get_content() == "first\n"


def test_pipelined_puts_report_a_refused_job_and_the_connection_recovers(settings: Settings) -> None:
    notifier = Notifier(settings.beanstalk_url)
    ids = notifier.put_many([("mail.bulk", 4096, b"{}"), ("mail.normal", 1024, b"{}")])
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    with pytest.raises(EnqueueError, match="JOB_TOO_BIG"):
        notifier.put_many([("mail.bulk", 4096, b"x" * 70_000)])
    assert notifier.notify("welcome", "a@example.com", {"name": "x"}) == ids[1] + 1
