"""Replies in (docs/events.md): ``notify(..., reply=True)`` mail carries a signed, expiring
Reply-To; ``beanmail inbound`` turns a reply to it into a ``message.replied`` event with the new
text only (Gmail, Outlook, Apple Mail and Thunderbird quoting), and refuses, recording why,
forged and expired addresses, auto-replies, bounces and loops."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from worker.events import replies
from worker.events.deliver import Runner
from worker.events.inbound import handle, reply_text
from worker.settings import Settings
from worker.store import Store

from .conftest import VENV_BIN, ROOT, bare_env, run_burst
from .endpoint import Endpoint
from .servers import SmtpServer

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
DOMAIN = "replies.example.org"

QUOTED = "> Ann commented on issue #42:\n> Can you look at this?\n"
STYLES = {
    "gmail": ("Sounds good, I'll take it.\n\nThanks,\nZoë\n\nOn Thu, Dec 3, 2026 at 10:49 PM Acme "
              "<noreply@acme.example> wrote:\n" + QUOTED, "Sounds good, I'll take it."),
    "outlook": ("Yes, merged.\n\nBest regards\nZoë\n\n________________________________\nFrom: Acme "
                "<noreply@acme.example>\nSent: Thursday, December 3, 2026 10:49 PM\nTo: Zoë <zoe@example.com>\n"
                "Subject: New comment on #42\n\nAnn commented on issue #42:\nCan you look at this?\n", "Yes, merged."),
    "apple": ("Will do tomorrow.\n\nSent from my iPhone\n\n> On 3 Dec 2026, at 22:49, Acme <noreply@acme.example> "
              "wrote:\n> \n" + QUOTED, "Will do tomorrow."),
    "thunderbird": ("Looks fine to me.\n\n-- \nZoë Example\nAcme Corp\n\nOn 03.12.26 22:49, Acme wrote:\n" + QUOTED,
                    "Looks fine to me."),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_the_new_text_of_a_reply_is_kept_without_the_quote_or_the_signature(style: str) -> None:
    text, expected = STYLES[style]
    assert reply_text(text) == expected


def test_a_reply_token_names_the_delivery_expires_and_rotates() -> None:
    token = replies.make_token("comment:1", "Zoe@Example.com", "new,old", ttl=30 * 86400)
    assert len(replies.address(token, DOMAIN).split("@")[0]) <= 64  # RFC 5321 local part
    assert replies.verify_token(token.upper(), "new") == replies.token_id("comment:1", "zoe@example.com")
    assert replies.verify_token(token, "newer,new")  # still accepted after a rotation while "new" is listed
    with pytest.raises(replies.ReplyTokenError, match="forged"):
        replies.verify_token(token, "old")  # only the first key signs
    with pytest.raises(replies.ReplyTokenError, match="expired"):
        replies.verify_token(token, "new", now=time.time() + 31 * 86400)
    with pytest.raises(replies.ReplyTokenError, match="malformed"):
        replies.verify_token("1" + token[1:], "new")  # 1 is no base32 digit


def reply(to: str, body: str, *, sender: str = "Zoë <zoe@example.com>", extra: str = "",
          subject: str = "Re: New comment on #42", message_id: str = "<r1@mail.example.com>") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body.replace("\n", "\r\n")).encode()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint().start()
    yield e
    e.stop()


@pytest.fixture
def reply_settings(settings: Settings, endpoint: Endpoint, tmp_path: Path) -> Settings:
    return settings.replace(reply_domain=DOMAIN, reply_secret="r3ply", events_url=endpoint.url, events_secret=SECRET,
                            events_spool=str(tmp_path / "events.spool"),
                            entities={"issue": {"callable": "tests.test_events:issue_by_id"}})


def delivered(settings: Settings, endpoint: Endpoint) -> list[dict[str, Any]]:
    runner = Runner(settings)
    assert runner.run(burst=True) == 0
    runner.close()
    return [json.loads(r.body) for r in endpoint.delivered()]


def test_a_reply_to_a_notify_reply_true_mail_becomes_a_verified_message_replied_event(
        reply_settings: Settings, endpoint: Endpoint, smtp: SmtpServer) -> None:
    from producer import Notifier

    n = Notifier(reply_settings.beanstalk_url)
    n.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, entities={"issue": {"type": "issue", "id": 42}},
             key="comment:91:zoe", reply=True)
    n.notify("welcome", "ann@example.com", {"name": "Ann"}, key="welcome:ann")  # no reply asked: no Reply-To
    n.close()
    run_burst(reply_settings)
    by_rcpt = {m.rcpt_tos[0]: m.message for m in smtp.wait_for(2)}
    assert by_rcpt["ann@example.com"]["Reply-To"] is None and "X-Beanmail-Reply" not in by_rcpt["ann@example.com"]
    reply_to = str(by_rcpt["zoe@example.com"]["Reply-To"])
    assert reply_to.startswith("reply+") and reply_to.endswith("@" + DOMAIN)
    assert "X-Beanmail-Reply" not in by_rcpt["zoe@example.com"]
    env = bare_env(reply_settings, BEANMAIL_REPLY_DOMAIN=DOMAIN, BEANMAIL_REPLY_SECRET="r3ply",
                   BEANMAIL_EVENTS_URL=endpoint.url, BEANMAIL_EVENTS_SECRET=SECRET,
                   BEANMAIL_EVENTS_SPOOL=reply_settings.events_spool)
    gmail, _ = STYLES["gmail"]
    proc = subprocess.run([str(VENV_BIN / "beanmail"), "inbound", "--recipient", reply_to], env=env, cwd=ROOT,
                          input=reply(f"Acme <{reply_to}>", gmail), capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith(b"replied"), proc.stdout + proc.stderr
    events = delivered(reply_settings, endpoint)
    assert sorted(e["type"] for e in events) == ["message.replied", "message.sent", "message.sent"]
    [event] = [e for e in events if e["type"] == "message.replied"]
    data = event["data"]
    assert (data["key"], data["recipient"], data["template"]) == ("comment:91:zoe", "zoe@example.com", "welcome")
    assert data["entities"] == {"issue": {"type": "issue", "id": 42}}
    assert data["text"] == "Sounds good, I'll take it." and data["sender_verified"] is True
    assert (data["from"], data["message_id"]) == ("zoe@example.com", "<r1@mail.example.com>")
    listing = subprocess.run([str(VENV_BIN / "beanmail"), "inbound", "--list", "--json"], env=env, cwd=ROOT,
                             capture_output=True, timeout=60)
    assert [(r["outcome"], r["key"]) for r in json.loads(listing.stdout)] == [("replied", "comment:91:zoe")]


def test_forged_expired_automatic_bounced_and_looping_mail_is_refused_recorded_and_not_passed_on(
        reply_settings: Settings, endpoint: Endpoint) -> None:
    store = Store(reply_settings.store)
    store.remember_reply(replies.token_id("k:1", "zoe@example.com"), "k:1", "zoe@example.com", "welcome", "{}")
    good = replies.address(replies.make_token("k:1", "zoe@example.com", "r3ply", 86400), DOMAIN)
    stale = replies.address(replies.make_token("k:1", "zoe@example.com", "r3ply", 86400, now=time.time() - 3 * 86400),
                            DOMAIN)
    forged = replies.address(replies.make_token("k:1", "zoe@example.com", "guess", 86400), DOMAIN)
    unknown = replies.address(replies.make_token("k:2", "zoe@example.com", "r3ply", 86400), DOMAIN)
    cases = {
        "forged": (reply(forged, "hi"), "forged reply token"),
        "expired": (reply(stale, "hi"), "expired reply token"),
        "never sent": (reply(unknown, "hi"), "names no message we sent"),
        "not ours": (reply("someone@example.org", "hi"), "no reply address of ours"),
        "auto-submitted": (reply(good, "I am away", extra="Auto-Submitted: auto-replied\r\n"), "Auto-Submitted"),
        "precedence": (reply(good, "Thanks for your mail", extra="Precedence: bulk\r\n"), "Precedence: bulk"),
        "out of office": (reply(good, "Back on Monday", subject="Out of Office: New comment"), "out-of-office"),
        "x-autoreply": (reply(good, "Back on Monday", extra="X-Autoreply: yes\r\n"), "x-autoreply"),
        "bounce": (reply(good, "Delivery failed", sender="MAILER-DAEMON@mx.example.com"), "a bounce"),
        "null return path": (reply(good, "Delivery failed", extra="Return-Path: <>\r\n"), "a bounce"),
        "loop": (reply(good, "hello", sender="beanmail <noreply@beanmail.example>"), "a loop"),
    }
    loop_settings = reply_settings.replace(from_addr="beanmail <noreply@beanmail.example>")
    for what, (raw, reason) in cases.items():
        result = handle(loop_settings, store, raw)
        assert result.outcome == "refused" and reason in result.reason, (what, result)
    assert handle(loop_settings, store, reply(good, STYLES["outlook"][0], sender="eve@example.net")).outcome == "replied"
    rows = store.inbound(limit=100)
    store.close()
    assert sum(r["outcome"] == "refused" for r in rows) == len(cases)
    [event] = delivered(reply_settings, endpoint)  # only the genuine reply, from someone else than the recipient
    assert event["data"]["sender_verified"] is False and event["data"]["text"] == "Yes, merged."


def test_an_html_only_reply_loses_its_blockquote_and_keeps_its_html(reply_settings: Settings, endpoint: Endpoint) -> None:
    store = Store(reply_settings.store)
    store.remember_reply(replies.token_id("k:1", "zoe@example.com"), "k:1", "zoe@example.com", "welcome", "{}")
    to = replies.address(replies.make_token("k:1", "zoe@example.com", "r3ply", 86400), DOMAIN)
    html = ("<div>Agreed &amp; done.</div><br><div class=gmail_quote>On Thu, Acme wrote:<blockquote>"
            "Ann commented</blockquote></div>")
    raw = (f"From: zoe@example.com\r\nTo: {to}\r\nSubject: Re: x\r\nMessage-ID: <h1@x>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}").encode()
    assert handle(reply_settings, store, raw).outcome == "replied"
    store.close()
    [event] = delivered(reply_settings, endpoint)
    assert event["data"]["text"].startswith("Agreed & done.") and "Ann commented" not in event["data"]["text"]
    assert event["data"]["html"] == html


def test_a_replys_attachments_travel_by_reference_into_the_blob_store(reply_settings: Settings,
                                                                      endpoint: Endpoint) -> None:
    """A screenshot and a PDF attached to a reply: the event names each (file name, type, size)
    with a blob reference, and the store gives back exactly their bytes."""
    from email.message import EmailMessage

    from producer.blobs import BlobStore

    store = Store(reply_settings.store)
    store.remember_reply(replies.token_id("k:2", "zoe@example.com"), "k:2", "zoe@example.com", "welcome", "{}")
    msg = EmailMessage()
    msg["From"], msg["Subject"], msg["Message-ID"] = "zoe@example.com", "Re: x", "<a1@x>"
    msg["To"] = replies.address(replies.make_token("k:2", "zoe@example.com", "r3ply", 86400), DOMAIN)
    msg.set_content("Here is the screenshot.")
    png, pdf = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, b"%PDF-1.7\n" + b"x" * 5000
    msg.add_attachment(png, maintype="image", subtype="png", filename="shot.png")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="Rechnung März.pdf")
    msg.add_attachment(b"x", maintype="text", subtype="plain", filename="../../a\x1b[31m\x00.txt")
    assert handle(reply_settings, store, msg.as_bytes()).outcome == "replied"
    store.close()
    [event] = delivered(reply_settings, endpoint)
    files = event["data"]["attachments"]
    assert [(f["filename"], f["content_type"], f["size"]) for f in files] == [
        ("shot.png", "image/png", len(png)), ("Rechnung März.pdf", "application/pdf", len(pdf)),
        ("../../a[31m.txt", "text/plain", 1)]  # no control character; a path in it is only text
    assert event["data"]["text"] == "Here is the screenshot."
    with BlobStore(reply_settings.store) as blobs:
        assert [blobs.get(f["ref"]) for f in files] == [png, pdf, b"x"]


def test_the_stores_tables_of_events_and_replies_work_on_sqlite_and_postgresql(store_location: str) -> None:
    store = Store(store_location)
    try:
        store.remember_refs([("k:1", "welcome", '{"issue": {"id": 1}}'), ("k:1", "welcome", "{}")])  # a second copy: kept once
        assert store.refs_for("k:1") == ("welcome", '{"issue": {"id": 1}}') and store.refs_for("k:2") is None
        store.remember_reply("tid", "k:1", "Zoe@Example.com", "welcome", "{}")
        assert store.reply_for("tid") == ("k:1", "zoe@example.com", "welcome", "{}")
        store.record_inbound(outcome="refused", reason="an automatic reply\0", address="Eve@Example.net", raw="x\0y")
        [row] = store.inbound()
        assert (row["outcome"], row["address"], row["reason"]) == ("refused", "eve@example.net", "an automatic reply\ufffd")
    finally:
        store.close()
