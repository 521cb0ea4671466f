"""Hooks never betray a committed request: after the commit, every mail of the transaction is
queued, spooled, or logged at error with its key; nothing raises into the request and one
failure costs no other mail. Django, Flask and the DB-API hook alike; Django's per-message
priority."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Iterator

import pytest

from producer import EnqueueError, Notifier
from producer import envelope as env
from producer import spool
from producer.blobs import BlobStore
from producer.client import connect, message_key
from producer.hooks import transaction
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, queued, run_burst
from .servers import Beanstalkd, SmtpServer

BIG = os.urandom(2 * 1024 * 1024)  # a 2 MB attachment: 2.7 MB once base64 in the job




def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "beanmail.producer" and r.levelno >= logging.ERROR]


def spooled(path: str) -> list[env.Envelope]:
    return [env.decode(base64.b64decode(json.loads(line)["body"])) for line in Path(path).read_bytes().splitlines()]


def flush(path: str, url: str) -> int:
    return spool.flush(path, Notifier(url, spool="", blobs="").put_body)


# -- Django ---------------------------------------------------------------------------------------

def mail_view(request: Any) -> Any:
    """A view that sends, in one transaction, the mails ?send=small,big,small names."""
    from django.core.mail import EmailMessage
    from django.db import transaction as dj_transaction
    from django.http import HttpResponse

    with dj_transaction.atomic():
        for n, size in enumerate(request.GET["send"].split(",")):
            mail = EmailMessage(f"mail {n}", "body", to=[f"u{n}@example.com"], headers={"Message-ID": f"<m{n}@test>"})
            if size == "big":
                mail.attach("big.bin", BIG, "application/octet-stream")
            assert mail.send() == 1
    return HttpResponse("ok")


urlpatterns: list[Any] = []


@pytest.fixture
def django_app(settings: Settings) -> Iterator[Any]:
    """The Django project tests/test_webapps.py configures, with a URL for ``mail_view``; returns
    a test client and lets each test set ``settings.BEANMAIL``."""
    import django
    from django.conf import settings as dj

    if not dj.configured:
        dj.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
                     EMAIL_BACKEND="producer.django.EmailBackend", DEFAULT_FROM_EMAIL="app@beanmail.example",
                     INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.test import Client
    from django.urls import clear_url_caches, path

    import producer.django

    urlpatterns[:] = [path("mail", mail_view)]
    saved = dj.ROOT_URLCONF if hasattr(dj, "ROOT_URLCONF") else None, dj.ALLOWED_HOSTS
    dj.ROOT_URLCONF, dj.ALLOWED_HOSTS = __name__, ["testserver"]
    clear_url_caches()
    dj.BEANMAIL = {"URL": settings.beanstalk_url, "STORE": ""}
    producer.django._notifier = None
    yield Client()
    producer.django._notifier = None
    dj.ROOT_URLCONF, dj.ALLOWED_HOSTS = saved
    clear_url_caches()


def key(n: int) -> str | None:
    """The key of the view's n-th mail: its Message-ID and its recipient (producer.client.message_key)."""
    return message_key("django", f"<m{n}@test>", [f"u{n}@example.com"])


def worker_store(location: str) -> None:
    """The store a worker creates at its first start: a web app uses it, never creates one."""
    if location and "://" not in location:
        Store(location).close()


def configure(**beanmail: str) -> None:
    from django.conf import settings as dj

    import producer.django

    worker_store(beanmail.get("STORE", ""))
    dj.BEANMAIL = {**dj.BEANMAIL, **beanmail}
    producer.django._notifier = None


def test_django_small_large_small_in_one_transaction_are_all_queued_and_delivered_the_large_by_reference(
        django_app: Any, settings: Settings, smtp: SmtpServer) -> None:
    configure(STORE=settings.store)
    assert django_app.get("/mail?send=small,big,small").status_code == 200
    jobs = queued(settings.beanstalk_url)
    assert [(tube, e.kind, e.id) for tube, e in jobs] == [
        ("mail.normal", "raw", key(0)), ("mail.normal", "ref", key(1)),
        ("mail.normal", "raw", key(2))]
    with BlobStore(settings.store) as blobs:
        whole = env.decode(blobs.get(jobs[1][1].ref) or b"")
    [attachment] = message_from_bytes(base64.b64decode(whole.message), policy=policy.default).iter_attachments()
    assert attachment.get_content() == BIG
    run_burst(settings)  # the worker resolves the reference and delivers all three
    received = {m.rcpt_tos[0]: m.message for m in smtp.wait_for(3)}
    assert sorted(received) == ["u0@example.com", "u1@example.com", "u2@example.com"]
    [attachment] = received["u1@example.com"].iter_attachments()
    assert attachment.get_content() == BIG
    with BlobStore(settings.store) as blobs:
        assert blobs.get(jobs[1][1].ref) is None  # removed with its final outcome


def test_django_25_mb_attachment_is_queued_by_reference(django_app: Any, settings: Settings) -> None:
    from django.core.mail import EmailMessage

    configure(STORE=settings.store)
    attachment = os.urandom(25 * 1024 * 1024)
    mail = EmailMessage("scan", "attached", to=["a@example.com"], headers={"Message-ID": "<scan@test>"})
    mail.attach("scan.pdf", attachment, "application/pdf")
    assert mail.send() == 1  # no transaction: put at once
    [(tube, ref)] = queued(settings.beanstalk_url)
    assert (tube, ref.kind, ref.id) == ("mail.normal", "ref", message_key("django", "<scan@test>", ["a@example.com"]))
    with BlobStore(settings.store) as blobs:
        whole = env.decode(blobs.get(ref.ref) or b"")
    message = base64.b64decode(whole.message)
    tail = 57 * (len(attachment) // 57 - 100)  # MIME base64: 57 bytes a line (parsing 33 MB costs seconds)
    for piece in (attachment[:5700], attachment[tail:]):
        assert base64.encodebytes(piece).replace(b"\n", b"\r\n") in message


def test_django_too_big_without_a_store_after_commit_is_logged_and_costs_no_other_mail(
        django_app: Any, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    # the issue as reported: send() returned 1, then EnqueueError escaped after the commit and
    # the last small mail was never queued
    assert django_app.get("/mail?send=small,big,small").status_code == 200
    assert [e.id for _, e in queued(settings.beanstalk_url)] == [key(0), key(2)]
    [logged] = errors(caplog)
    assert f"key={key(1)}" in logged and "max-job-size" in logged and "BEANMAIL_STORE" in logged


def test_django_outage_after_commit_without_a_spool_logs_each_key_and_the_request_succeeds(
        django_app: Any, settings: Settings, beanstalkd: Beanstalkd, caplog: pytest.LogCaptureFixture) -> None:
    configure(STORE=settings.store)
    beanstalkd.stop()
    assert django_app.get("/mail?send=small,big,small").status_code == 200
    logged = errors(caplog)
    assert len(logged) == 3 and all("mail lost after commit" in m and "unreachable" in m for m in logged)
    assert [m.split("key=")[1].split(" ")[0] for m in logged] == [key(n) for n in range(3)]


def test_django_outage_after_commit_with_a_spool_spools_every_mail(
        django_app: Any, settings: Settings, beanstalkd: Beanstalkd, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "beanmail.spool")
    configure(STORE=settings.store, SPOOL=path)
    beanstalkd.stop()
    assert django_app.get("/mail?send=small,big,small").status_code == 200
    assert [(e.kind, e.id) for e in spooled(path)] == [
        ("raw", key(0)), ("ref", key(1)), ("raw", key(2))]
    assert errors(caplog) == []
    beanstalkd.start()
    assert flush(path, settings.beanstalk_url) == 3 and len(queued(settings.beanstalk_url)) == 3


def test_django_fail_silently_is_honoured_when_enqueued_at_once(django_app: Any, settings: Settings,
                                                                 beanstalkd: Beanstalkd) -> None:
    from django.core.mail import send_mail
    from django.db import transaction as dj_transaction

    beanstalkd.stop()
    with pytest.raises(EnqueueError, match="unreachable"):  # no transaction: enqueued at once
        send_mail("s", "b", None, ["a@example.com"])
    assert send_mail("s", "b", None, ["a@example.com"], fail_silently=True) == 0
    configure(ON_COMMIT=False)
    with dj_transaction.atomic():
        with pytest.raises(EnqueueError):
            send_mail("s", "b", None, ["a@example.com"])
        assert send_mail("s", "b", None, ["a@example.com"], fail_silently=True) == 0


def test_django_per_message_priority_by_header_or_block(django_app: Any, settings: Settings,
                                                        smtp: SmtpServer) -> None:
    from django.core.mail import EmailMessage, send_mail
    from django.db import transaction as dj_transaction

    from producer.django import notify_on_commit, priority

    EmailMessage("reset", "b", to=["a@example.com"], headers={"X-Beanmail-Priority": "urgent"}).send()
    with dj_transaction.atomic():
        with priority("urgent"):
            send_mail("in the block", "b", None, ["b@example.com"])
            notify_on_commit("welcome", "c@example.com", {"name": "C"}, key="c")
        send_mail("after the block", "b", None, ["d@example.com"])
    jobs = queued(settings.beanstalk_url)
    assert [(tube, e.to[0].address) for tube, e in jobs] == [
        ("mail.urgent", "a@example.com"), ("mail.urgent", "b@example.com"), ("mail.urgent", "c@example.com"),
        ("mail.normal", "d@example.com")]
    run_burst(settings)
    assert all("X-Beanmail-Priority" not in m.message for m in smtp.wait_for(4))
    for _, e in jobs[:2] + jobs[3:]:
        assert b"X-Beanmail-Priority" not in base64.b64decode(e.message)
    with pytest.raises(ValueError, match="X-Beanmail-Priority"):
        EmailMessage("x", "b", to=["a@example.com"], headers={"X-Beanmail-Priority": "asap"}).send()


DJANGO_PROJECT = """
import sys
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[2]}},
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [sys.argv[3]]}],
    EMAIL_BACKEND="producer.django.EmailBackend", DEFAULT_FROM_EMAIL="app@beanmail.example",
    BEANMAIL={"URL": sys.argv[1], "STORE": ""}, USE_TZ=True, SECRET_KEY="test", PASSWORD_HASHERS=[
        "django.contrib.auth.hashers.MD5PasswordHasher"])
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import User
from django.db import transaction
from producer.django import priority

User.objects.create_user("zoe", "zoe@example.com", "pw")
with transaction.atomic():
    form = PasswordResetForm({"email": "zoe@example.com"})
    assert form.is_valid()
    with priority("urgent"):
        form.save(domain_override="app.example")
"""


def test_django_password_reset_form_mail_goes_urgent_in_one_line(settings: Settings, smtp: SmtpServer,
                                                                  tmp_path: Path) -> None:
    """A real project with django.contrib.auth: ``with priority("urgent"): form.save(...)``."""
    templates = tmp_path / "templates" / "registration"
    templates.mkdir(parents=True)
    (templates / "password_reset_subject.txt").write_text("Reset your password")
    (templates / "password_reset_email.html").write_text("{{ protocol }}://{{ domain }}/reset/{{ uid }}/{{ token }}/")
    script = tmp_path / "project.py"
    script.write_text(DJANGO_PROJECT)
    subprocess.run([sys.executable, str(script), settings.beanstalk_url, str(tmp_path / "db.sqlite3"),
                    str(tmp_path / "templates")], check=True, timeout=60, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    [(tube, job)] = queued(settings.beanstalk_url)
    assert tube == "mail.urgent" and [r.address for r in job.to] == ["zoe@example.com"]
    message = base64.b64decode(job.message)
    assert b"Subject: Reset your password" in message and b"X-Beanmail-Priority" not in message
    run_burst(settings)
    [received] = smtp.wait_for(1)
    assert received.rcpt_tos == ["zoe@example.com"] and "X-Beanmail-Priority" not in received.message


# -- Flask ----------------------------------------------------------------------------------------

def flask_app(settings: Settings, **config: str) -> Any:
    from flask import Flask

    from producer.flask import Beanmail

    app = Flask(__name__)
    worker_store(config.get("BEANMAIL_STORE", ""))
    app.config.update({"BEANMAIL_URL": settings.beanstalk_url, "BEANMAIL_STORE": "", **config})
    beanmail = Beanmail(app)

    @app.get("/mail")
    def mail() -> str:
        for n in range(3):
            context = {"name": "x" * 2_000_000} if n == 1 else {"name": "x"}
            beanmail.notify("welcome", f"u{n}@example.com", context, key=f"flask:{n}")
        return "ok"
    return app


def test_flask_small_large_small_all_queued_the_large_by_reference(settings: Settings) -> None:
    client = flask_app(settings, BEANMAIL_STORE=settings.store).test_client()
    assert client.get("/mail").status_code == 200
    assert [(e.kind, e.id) for _, e in queued(settings.beanstalk_url)] == [
        ("mail", "flask:0"), ("ref", "flask:1"), ("mail", "flask:2")]


def test_flask_after_the_request_a_failure_never_raises_and_costs_no_other_mail(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    client = flask_app(settings).test_client()  # no blob store: the large one is refused
    assert client.get("/mail").status_code == 200
    assert [e.id for _, e in queued(settings.beanstalk_url)] == ["flask:0", "flask:2"]
    [logged] = errors(caplog)
    assert "key=flask:1" in logged and "max-job-size" in logged


@pytest.mark.parametrize("with_spool", [False, True])
def test_flask_outage_after_the_request_logs_or_spools(settings: Settings, beanstalkd: Beanstalkd, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture, with_spool: bool) -> None:
    path = str(tmp_path / "beanmail.spool")
    app = flask_app(settings, BEANMAIL_STORE=settings.store, **({"BEANMAIL_SPOOL": path} if with_spool else {}))
    beanstalkd.stop()
    assert app.test_client().get("/mail").status_code == 200
    if with_spool:
        assert [(e.kind, e.id) for e in spooled(path)] == [("mail", "flask:0"), ("ref", "flask:1"), ("mail", "flask:2")]
        assert errors(caplog) == []
    else:
        logged = errors(caplog)
        assert [m.split("key=")[1].split(" ")[0] for m in logged] == ["flask:0", "flask:1", "flask:2"]


# -- plain DB-API -----------------------------------------------------------------------------------

def comment(db: sqlite3.Connection, notifier: Notifier) -> None:
    with transaction(db, notifier) as mail:
        db.execute("INSERT INTO comments (body) VALUES ('fixed')")
        mail.notify("welcome", "a@example.com", {"name": "a"}, key="c:a")
        mail.send_raw(b"Subject: big\r\n\r\n" + BIG.hex().encode(), ["b@example.com"], key="c:b")
        mail.notify("welcome", "c@example.com", {"name": "c"}, key="c:c")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "app.sqlite3")
    conn.execute("CREATE TABLE comments (body TEXT)")
    conn.commit()
    yield conn
    conn.close()


def test_db_api_hook_queues_small_large_small_and_survives_a_refusal(
        settings: Settings, db: sqlite3.Connection, caplog: pytest.LogCaptureFixture) -> None:
    comment(db, Notifier(settings.beanstalk_url, blobs=settings.store))
    assert [(e.kind, e.id) for _, e in queued(settings.beanstalk_url)] == [
        ("mail", "c:a"), ("ref", "c:b"), ("mail", "c:c")]
    comment(db, Notifier(settings.beanstalk_url, blobs=""))  # too big, no store: the others still go
    assert [e.id for _, e in queued(settings.beanstalk_url)][3:] == ["c:a", "c:c"]
    [logged] = errors(caplog)
    assert "key=c:b" in logged
    assert db.execute("SELECT count(*) FROM comments").fetchone()[0] == 2


def test_db_api_hook_outage_after_commit_logs_or_spools(settings: Settings, beanstalkd: Beanstalkd,
                                                        db: sqlite3.Connection, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    beanstalkd.stop()
    comment(db, Notifier(settings.beanstalk_url, blobs=settings.store, spool=""))
    assert [m.split("key=")[1].split(" ")[0] for m in errors(caplog)] == ["c:a", "c:b", "c:c"]
    path = str(tmp_path / "beanmail.spool")
    comment(db, Notifier(settings.beanstalk_url, blobs=settings.store, spool=path))
    assert [(e.kind, e.id) for e in spooled(path)] == [("mail", "c:a"), ("ref", "c:b"), ("mail", "c:c")]
    assert db.execute("SELECT count(*) FROM comments").fetchone()[0] == 2  # both requests committed
    beanstalkd.start()
    assert flush(path, settings.beanstalk_url) == 3


def test_a_failure_with_a_spool_is_kept_not_logged_as_lost(settings: Settings, db: sqlite3.Connection,
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A job beanstalkd refuses for good after the commit is spooled too: the flush then sets it
    aside in the rejects file, where a person can find it, instead of it being lost."""
    path = str(tmp_path / "beanmail.spool")
    comment(db, Notifier(settings.beanstalk_url, blobs="", spool=path))
    assert [e.id for e in spooled(path)] == ["c:b"]
    assert flush(path, settings.beanstalk_url) == 0 and Path(f"{path}.rejects").exists()
    assert [e.id for _, e in queued(settings.beanstalk_url)] == ["c:a", "c:c"]
