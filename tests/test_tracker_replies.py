"""The example tracker closes the loop (examples/tracker/replies.py): a comment mails the other
watchers with a reply address each; one watcher's reply, piped into `beanmail inbound`, reaches
the tracker as a signed `message.replied` webhook (POSTed by the events runner over real HTTP),
becomes that watcher's comment, and mails the other watchers through the worker and a real SMTP
server, the replier excluded. A forged event and a reply from someone else post nothing."""

from __future__ import annotations

import base64
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from producer import Notifier
from worker.events.deliver import Runner
from worker.settings import Settings

from .conftest import ROOT, VENV_BIN, bare_env, run_burst
from .servers import SmtpServer
from .test_inbound import client_reply
from .test_mailout import run_fanout

SECRET = "whsec_" + base64.b64encode(b"t" * 32).decode()
DOMAIN = "replies.tracker.example"


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tracker(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    from examples.tracker.app import Tracker

    app = Tracker(str(tmp_path / "tracker.sqlite3"), Notifier(settings.beanstalk_url), SECRET)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    server.server_close()


def send(settings: Settings) -> None:
    """In-process workers, --burst: the mailout tube's fan-out, then each watcher's mail."""
    run_fanout(settings)
    run_burst(settings)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_watchers_reply_becomes_a_comment_that_mails_the_other_watchers_but_not_the_replier(
        settings: Settings, smtp: SmtpServer, tracker: tuple[str, Any], tmp_path: Path) -> None:
    url, app = tracker
    settings = settings.replace(reply_domain=DOMAIN, reply_secret="tr4cker", events_url=f"{url}/beanmail/events",
                                events_secret=SECRET, events_spool=str(tmp_path / "events.spool"))
    form = urllib.parse.urlencode({"author": "ann@example.com", "body": "Can you look at this?"}).encode()
    assert post(f"{url}/issues/1/comments", form) == 200  # after the redirect to the issue
    send(settings)
    first = {m.rcpt_tos[0]: m.message for m in smtp.wait_for(2)}
    assert set(first) == {"bob@example.com", "cat@example.com"}  # the commenter is not mailed
    reply_to = str(first["bob@example.com"]["Reply-To"])
    assert reply_to.startswith("reply+") and reply_to.endswith("@" + DOMAIN)
    assert str(first["cat@example.com"]["Reply-To"]) != reply_to  # an address per watcher

    env = bare_env(settings, BEANMAIL_REPLY_DOMAIN=DOMAIN, BEANMAIL_REPLY_SECRET="tr4cker",
                   BEANMAIL_EVENTS_URL=settings.events_url, BEANMAIL_EVENTS_SECRET=SECRET,
                   BEANMAIL_EVENTS_SPOOL=settings.events_spool)
    bobs = client_reply("outlook", reply_to).replace(b"bob.carter@contoso.example", b"bob@example.com")
    eves = client_reply("gmail", reply_to)  # the address forwarded to someone else, who replies
    for raw in (bobs, eves):
        proc = subprocess.run([str(VENV_BIN / "beanmail"), "inbound", "--recipient", reply_to], env=env, cwd=ROOT,
                              input=raw, capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith(b"replied"), proc.stdout + proc.stderr
    forged = b'{"type":"message.replied","timestamp":"2026-12-03T22:54:30.661Z","data":{"key":"comment:1:bob@example.com"}}'
    assert post(f"{url}/beanmail/events", forged, {"webhook-id": "evt_x", "webhook-timestamp": "1",
                                                   "webhook-signature": "v1,AAAA"}) == 401
    runner = Runner(settings)  # the signed webhooks to the tracker: its 204 takes each
    assert runner.run(burst=True) == 0
    runner.close()
    comments = app.db().execute("SELECT author, body FROM comments WHERE issue_id = 1 ORDER BY id").fetchall()
    assert comments == [("ann@example.com", "Can you look at this?"),
                        ("bob@example.com", "Yes, merged into main this morning; it ships with 4.2.")]
    send(settings)
    second = [m for m in smtp.wait_for(4)[2:]]
    assert sorted(m.rcpt_tos[0] for m in second) == ["ann@example.com", "cat@example.com"]  # not bob, the replier
    body = second[0].message.get_body(("plain",)).get_content()
    assert "bob@example.com commented" in body and "Yes, merged into main this morning" in body
    assert "Kind regards" not in body and "Original" not in body
    send(settings)
    assert len(smtp.messages) == 4


def test_a_private_issue_takes_replies_only_from_who_still_watches_it(
        settings: Settings, smtp: SmtpServer, tracker: tuple[str, Any], tmp_path: Path) -> None:
    from examples.tracker.app import entities

    url, app = tracker
    settings = settings.replace(reply_domain=DOMAIN, reply_secret="tr4cker", events_url=f"{url}/beanmail/events",
                                events_secret=SECRET, events_spool=str(tmp_path / "events.spool"),
                                entities=entities(app.db_path))
    app.comment(3, "ann@example.com", "Rotated the keys.")
    send(settings)
    reply_to = {m.rcpt_tos[0]: str(m.message["Reply-To"]) for m in smtp.wait_for(2)}
    app.unwatch(3, "cat@example.com")
    env = bare_env(settings, BEANMAIL_REPLY_DOMAIN=DOMAIN, BEANMAIL_REPLY_SECRET="tr4cker",
                   BEANMAIL_EVENTS_URL=settings.events_url, BEANMAIL_EVENTS_SECRET=SECRET,
                   BEANMAIL_EVENTS_SPOOL=settings.events_spool)
    for who, name in (("cat@example.com", "iphone"), ("bob@example.com", "thunderbird")):
        raw = client_reply(name, reply_to[who])
        raw = raw.replace(b"cat@icloud.com", who.encode()).replace(b"dan@example.net", who.encode())
        proc = subprocess.run([str(VENV_BIN / "beanmail"), "inbound"], env=env, cwd=ROOT, input=raw,
                              capture_output=True, timeout=60)
        assert proc.stdout.splitlines()[-1].startswith(b"replied"), proc.stdout + proc.stderr
    runner = Runner(settings)
    assert runner.run(burst=True) == 0
    runner.close()
    comments = app.db().execute("SELECT author, body FROM comments WHERE issue_id = 3 ORDER BY id").fetchall()
    assert comments == [("ann@example.com", "Rotated the keys."), ("bob@example.com", "Looks fine to me.")]
    send(settings)
    assert [m.rcpt_tos[0] for m in smtp.wait_for(3)[2:]] == ["ann@example.com"]  # cat left, bob replied
    assert len(smtp.messages) == 3
