"""Hostile mail at the bounce intake: MIME bombs (nesting 2,000 deep, 20,000 parts), latin-1
with NULs, a truncated report, binary noise. `beanmail bounce` records each as ignored with its
reason and exits 0, on both store backends; `beanmail bounces fetch` reads a dovecot mailbox
holding them among genuine bounces, handles every one and drains it. Plus the classification a
user sees for one DSN naming three recipients, each with its own status."""

from __future__ import annotations

import imaplib
import json
import random
import ssl
import subprocess
import threading
from email.utils import make_msgid
from pathlib import Path

import pytest

from worker.feedback import verp
from worker.feedback.parse import parse
from worker.store import Store

from .conftest import VENV_BIN, bare_env, beanmail
from .relay import Dovecot

RETURN_PATH = "bounces@returns.beanmail.example"
SECRET = "verp-secret-for-hostile-tests"


def nested(depth: int) -> bytes:
    head = b"From: MAILER-DAEMON@mx.example\r\nTo: bounces@returns.beanmail.example\r\nSubject: Undelivered\r\n" \
           b"MIME-Version: 1.0\r\n"
    body = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    body += b"Content-Type: text/plain\r\n\r\nuser unknown <x@example.com>\r\n"
    return head + body + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))


def rfc822_nested(depth: int) -> bytes:
    raw = b"From: someone@example.com\r\nSubject: x\r\n\r\nx\r\n"
    for _ in range(depth):
        raw = b"From: MAILER-DAEMON@mx.example\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + raw
    return raw


def many_parts(count: int) -> bytes:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\nx%d\r\n" % i for i in range(count))
    return (b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + b"--p--\r\n")


def dsn(return_path: str, recipients: dict[str, tuple[str, str]], *, charset: str = "us-ascii",
        note: str = "") -> bytes:
    """A multipart/report DSN as Postfix writes it, one block per recipient: address ->
    (status, diagnostic)."""
    blocks = "".join(f"Final-Recipient: rfc822; {a}\r\nAction: failed\r\nStatus: {s}\r\n"
                     f"Diagnostic-Code: smtp; {d}\r\n\r\n" for a, (s, d) in recipients.items())
    text = (f"Content-Type: text/plain; charset={charset}\r\n\r\nI'm sorry to have to inform you that your message"
            f" could not be delivered to one or more recipients. {note}\r\n\r\n")
    return (f"From: MAILER-DAEMON@mx.example (Mail Delivery System)\r\nTo: {return_path}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: {make_msgid()}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n--r\r\n{text}'
            f"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n{blocks}"
            f"--r\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{return_path}>\r\n"
            f"From: noreply@beanmail.example\r\nSubject: Welcome\r\n\r\n--r--\r\n").encode(charset, "replace")


def hostile() -> dict[str, bytes]:
    noise = random.Random(7)
    latin = ("From: Mail Delivery System <MAILER-DAEMON@mx.example>\nSubject: Unzustellbar: \xe9t\xe9 \x00\x00\n"
             "Content-Type: text/plain; charset=iso-8859-1\n\n\xe9t\xe9 \x00 caf\xe9 \x00\x00 "
             "nothing about anybody\n").encode("latin-1")
    return {
        "nested 2000 deep": nested(2000),
        "message/rfc822 5000 deep": rfc822_nested(5000),
        "20000 parts": many_parts(20000),
        "latin-1 with NULs": latin,
        "truncated report": dsn(RETURN_PATH, {"cut@example.com": ("5.1.1", "550 5.1.1 no such user")})[:260],
        "binary noise": bytes(noise.getrandbits(8) for _ in range(4096)),
        "empty": b"",
    }


@pytest.mark.parametrize("name", list(hostile()))
def test_parse_reads_hostile_mail_without_raising_and_says_why(name: str) -> None:
    report = _parse_without_hanging(hostile()[name])
    assert report.kind == "unknown" and report.failures == []
    assert report.note  # "not read: ... a MIME bomb", "not a bounce", ...


def test_each_recipient_of_one_dsn_gets_its_own_status_and_reason() -> None:
    report = parse(dsn(RETURN_PATH, {
        "gone@example.com": ("5.1.1", "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"),
        "full@example.com": ("5.2.2", "552 5.2.2 Mailbox full: quota exceeded"),
        "sender@example.com": ("5.1.8", "553 5.1.8 <noreply@beanmail.example>: Sender address rejected:"
                                        " Domain not found"),
    }))
    got = {f.address: (f.status, f.reason, f.classification) for f in report.failures}
    assert got == {"gone@example.com": ("5.1.1", "user-unknown", "hard"),
                   "full@example.com": ("5.2.2", "mailbox-full", "soft"),
                   "sender@example.com": ("5.1.8", "sender-side", "refused")}


def _env(store: str) -> dict[str, str]:
    return bare_env(None, BEANMAIL_STORE=store, BEANMAIL_RETURN_PATH=RETURN_PATH, BEANMAIL_RETURN_PATH_SECRET=SECRET,
                    BEANMAIL_FROM="noreply@beanmail.example")


def _remember(store: Store, key: str, recipient: str) -> str:
    token = verp.make_token(key, recipient, SECRET)
    store.remember_message(verp.token_id(key, recipient), key, recipient, "welcome", bulk=False)
    return verp.return_path(RETURN_PATH, token)


def test_beanmail_bounce_records_hostile_mail_as_ignored_and_exits_0(store_location: str) -> None:
    store = Store(store_location)
    env = _env(store_location)
    for name, raw in hostile().items():
        proc = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], env=env, input=raw, capture_output=True,
                              timeout=60)
        assert proc.returncode == 0, f"{name}: {proc.stderr.decode(errors='replace')}"
        assert b"Traceback" not in proc.stderr, name
        assert proc.stdout.decode().strip().splitlines()[-1].startswith("ignored: "), (name, proc.stdout)
    rows = store.bounces(limit=20)
    assert len(rows) == len(hostile()) and {r["classification"] for r in rows} == {"ignored"}
    assert any("MIME bomb" in r["detail"] for r in rows)
    # a latin-1 DSN with NULs in it, for a message we sent: read, tied, suppressed (PostgreSQL holds no NUL)
    return_path = _remember(store, "latin:1", "ze@example.com")
    raw = dsn(return_path, {"ze@example.com": ("5.1.1", "550 5.1.1 Benutzer unbekannt \x00: user unknown")},
              charset="latin-1", note="\xe9t\xe9 \x00")
    proc = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], env=env, input=raw, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip().splitlines()[-1].split() == ["hard", "ze@example.com", "latin:1", "suppressed"]
    assert store.suppressed("ze@example.com")[0] == "bounce"
    # an auto-reply and an SES delivery notice to a return path of ours: ignored, nobody suppressed
    away = _remember(store, "away:1", "away@example.com")
    auto = (f"From: away@example.com\r\nTo: {away}\r\nSubject: Out of Office: Welcome\r\n"
            "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n").encode()
    delivered = _ses_mail({"notificationType": "Delivery", "mail": {"source": away, "messageId": "m2"},
                           "delivery": {"recipients": ["away@example.com"]}})
    for raw, why in ((auto, "ignored: auto-reply"), (delivered, "ignored: a delivery notification")):
        proc = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], env=env, input=raw, capture_output=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().strip().splitlines()[-1] == why
    assert store.suppressed("away@example.com") is None
    store.close()


@pytest.mark.server
def test_bounces_fetch_sets_hostile_mail_aside_and_drains_the_mailbox(tmp_path: Path) -> None:
    dovecot = Dovecot().start()
    try:
        store_path = str(tmp_path / "store.sqlite3")
        store = Store(store_path)
        genuine = [_remember(store, f"imap:{n}", f"gone{n}@example.com") for n in range(2)]
        imap = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                                 ssl_context=ssl.create_default_context(cafile=str(dovecot.cert)))
        imap.login("bounces", dovecot.password)
        messages = [dsn(genuine[0], {"gone0@example.com": ("5.1.1", "550 5.1.1 user unknown")}),
                    *hostile().values(),
                    dsn(genuine[1], {"gone1@example.com": ("5.2.2", "552 5.2.2 mailbox full")})]
        for raw in messages:
            typ, _ = imap.append("INBOX", None, None, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") or b"\r\n")
            assert typ == "OK"
        imap.select("INBOX")
        assert len(imap.uid("SEARCH", None, "ALL")[1][0].split()) == len(messages)
        env = {**_env(store_path), "BEANMAIL_BOUNCE_MAILBOX": dovecot.mailbox_url()}
        first = beanmail("bounces", "fetch", "--json", env=env, timeout=120)
        assert "Traceback" not in first.stderr
        counts = json.loads(first.stdout.strip().splitlines()[-1])
        assert counts["messages"] == len(messages)
        assert (counts.get("hard"), counts.get("soft")) == (1, 1)
        assert counts.get("ignored") == len(hostile())
        assert store.suppressed("gone0@example.com")[0] == "bounce"
        assert store.suppressed("gone1@example.com") is None  # a full mailbox is soft
        again = beanmail("bounces", "fetch", "--json", env=env, timeout=60)
        assert json.loads(again.stdout.strip().splitlines()[-1]) == {"messages": 0}  # drained: nothing left to take
        imap.select("INBOX")
        assert imap.uid("SEARCH", None, "UNKEYWORD $BeanmailHandled")[1][0].split() == []
        imap.logout()
        store.close()
    finally:
        dovecot.stop()


def _report(parts: str) -> bytes:
    return ("From: MAILER-DAEMON@mx.example\r\nTo: bounces@returns.beanmail.example\r\nSubject: failure notice\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
            f"{parts}--r--\r\n").encode()


def test_free_text_recipients_each_get_the_status_written_beside_them() -> None:
    """A qmail-style report, two recipients, two different troubles: neither takes the other's."""
    raw = (b"From: MAILER-DAEMON@mx.example\r\nTo: bounces@returns.beanmail.example\r\nSubject: failure notice\r\n\r\n"
           b"Hi. This is the qmail-send program at mx.example.\r\nI'm afraid I wasn't able to deliver your message"
           b" to the following addresses.\r\nThis is a permanent error; I've given up.\r\n\r\n<gone@example.com>:\r\n"
           b"192.0.2.1 does not like recipient.\r\nRemote host said: 550 5.1.1 <gone@example.com>: Recipient address"
           b" rejected: User unknown in local recipient table\r\nGiving up on 192.0.2.1.\r\n\r\n<full@example.net>:\r\n"
           b"192.0.2.2 does not like recipient.\r\nRemote host said: 552 5.2.2 <full@example.net>: Mailbox full\r\n"
           b"Giving up on 192.0.2.2.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
           b"Return-Path: <bounces+x@returns.beanmail.example>\r\nTo: gone@example.com, full@example.net\r\n\r\nhi\r\n")
    report = parse(raw)
    got = {f.address: (f.status, f.reason, f.classification) for f in report.failures}
    assert got == {"gone@example.com": ("5.1.1", "user-unknown", "hard"),
                   "full@example.net": ("5.2.2", "mailbox-full", "soft")}


def test_a_status_part_without_recipient_blocks_leaves_the_text_to_read() -> None:
    raw = _report("--r\r\nContent-Type: text/plain\r\n\r\nDelivery to the following recipient failed permanently:\r\n\r\n"
                  "  gone@example.com\r\n\r\nRemote server said: 550 5.1.1 <gone@example.com>: user unknown (in reply"
                  " to RCPT TO command)\r\n\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\n"
                  "Reporting-MTA: dns; mx.example\r\n\r\n")
    [failure] = parse(raw).failures
    assert (failure.address, failure.classification, failure.reason) == ("gone@example.com", "hard", "user-unknown")


def _one_dsn(reporting_mta: str, notice: str, recipient_block: str) -> bytes:
    return _report(f"--r\r\nContent-Type: text/plain\r\n\r\n{notice}\r\n\r\n--r\r\n"
                   f"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {reporting_mta}\r\n\r\n"
                   f"{recipient_block}\r\n\r\n")


GONE = "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" \
       "Diagnostic-Code: smtp; 550 5.1.1 Mailbox does not exist"


def test_a_refusal_by_an_amazon_ses_receipt_rule_never_suppresses_at_once() -> None:
    """SES receiving bounces with the text its domain's owner picked: no proof the address is gone."""
    [failure] = parse(_one_dsn("inbound-smtp.us-west-2.amazonaws.com", "This message could not be delivered.",
                               GONE)).failures
    assert (failure.reason, failure.classification) == ("filtered", "soft")
    [failure] = parse(_one_dsn("mx.example.com", "This message could not be delivered.", GONE)).failures
    assert (failure.reason, failure.classification) == ("user-unknown", "hard")


def test_a_notice_that_contradicts_its_user_unknown_counts_as_soft() -> None:
    """"Not enough disk space" above "550 5.1.1 User Unknown": evidence that disagrees never
    suppresses a recipient for good; a notice about two recipients is not read that way."""
    notice = "Your message to <nekochan> was automatically rejected:\r\nNot enough disk space"
    [failure] = parse(_one_dsn("mx.example.com", notice, GONE)).failures
    assert (failure.reason, failure.classification) == ("mailbox-full", "soft")
    two = GONE + "\r\n\r\n" + GONE.replace("gone@", "other@")
    assert {f.classification for f in parse(_one_dsn("mx.example.com", notice, two)).failures} == {"hard"}


def test_each_line_of_a_sendmail_transcript_speaks_for_its_own_recipient() -> None:
    raw = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example>\r\nTo: bounces@returns.beanmail.example\r\n"
           b"Subject: Returned mail: User unknown\r\n\r\n   ----- Transcript of session follows -----\r\n"
           b"554 <reset@example.edu>... Remote protocol error: Connection reset by peer\r\n"
           b"550 example.org (smtp)... 550 Host unknown\r\n"
           b"554 <nohost@example.org>... 550 Host unknown (Authoritative answer from name server)\r\n"
           b"   ----- Unsent message follows -----\r\nTo: reset@example.edu\r\n\r\nhi\r\n")
    got = {f.address: f.classification for f in parse(raw).failures}
    assert got == {"reset@example.edu": "soft", "nohost@example.org": "hard"}


@pytest.mark.parametrize("action", ["failed (bad destination mailbox address)", "failure", "error", "Failed"])
def test_every_spelling_of_a_failed_action_is_a_failure(action: str) -> None:
    raw = _report(f"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
                  f"Final-Recipient: rfc822; gone@example.com\r\nAction: {action}\r\nStatus: 5.1.1\r\n"
                  f"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n")
    [failure] = parse(raw).failures
    assert (failure.action, failure.classification) == ("failed", "hard")


@pytest.mark.parametrize("status, diagnostic, reason, classification", [
    ("5.1.7", "553 5.1.7 The sender address <noreply@beanmail.example> is not a valid RFC-5321 address", "sender-side",
     "refused"),
    ("5.1.8", "553 5.1.8 <noreply@beanmail.example>: Sender address rejected: Domain not found", "sender-side",
     "refused"),
    ("5.1.0", "550 5.1.0 <noreply@beanmail.example> sender rejected", "sender-side", "refused"),
    ("5.7.1", "550 5.7.1 Service unavailable; client host [192.0.2.9] blocked using zen.spamhaus.org", "blocked",
     "refused"),
    ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering", "spam-detected", "refused"),
    ("5.7.26", "550 5.7.26 Unauthenticated email from beanmail.example is not accepted due to its DMARC policy",
     "policy", "refused"),
    ("4.4.7", "Delivery expired (message too old): 451 4.4.1 connection timed out", "expired", "soft"),
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "message-too-big", "soft"),
    ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota", "mailbox-full", "soft"),
    ("5.0.0", "550 Unknown user gone@example.com (in reply to end of DATA command)", "filtered", "soft"),
    ("5.1.1", "550 5.1.1 The email account that you tried to reach does not exist", "user-unknown", "hard"),
    ("5.4.4", "Host or domain name not found. Name service error for name=nx.example type=A: Host not found",
     "host-unknown", "hard"),
])
def test_reasons_and_what_they_do(status: str, diagnostic: str, reason: str, classification: str) -> None:
    raw = _report(f"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
                  f"Final-Recipient: rfc822; someone@example.com\r\nAction: failed\r\nStatus: {status}\r\n"
                  f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n")
    [failure] = parse(raw).failures
    assert (failure.reason, failure.classification) == (reason, classification)


def _ses_mail(message: dict[str, object]) -> bytes:
    return (b"From: no-reply@sns.amazonaws.com\r\nTo: bounces@returns.beanmail.example\r\n"
            b"Subject: AWS Notification Message\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n"
            + json.dumps({"Type": "Notification", "Message": json.dumps(message)}, indent=2).encode() + b"\r\n")


def test_ses_notifications_arriving_as_mail_are_read_for_what_they_are() -> None:
    mail = {"source": "bounces+tok@returns.beanmail.example", "messageId": "m1"}
    delivery = parse(_ses_mail({"notificationType": "Delivery", "mail": mail,
                                "delivery": {"recipients": ["fine@example.com"]}}))
    assert (delivery.kind, delivery.failures) == ("delivery", [])
    complaint = parse(_ses_mail({"notificationType": "Complaint", "mail": mail, "complaint": {
        "complainedRecipients": [{"emailAddress": "angry@example.com"}], "complaintFeedbackType": "abuse"}}))
    assert complaint.complaint and complaint.complained == "angry@example.com" and complaint.failures == []
    assert "bounces+tok@returns.beanmail.example" in complaint.return_paths
    full = parse(_ses_mail({"notificationType": "Bounce", "mail": mail, "bounce": {
        "bounceType": "Transient", "bounceSubType": "MailboxFull",
        "bouncedRecipients": [{"emailAddress": "full@example.com", "status": "5.2.2",
                               "diagnosticCode": "smtp; 552 5.2.2 mailbox full"}]}}))
    assert [(f.address, f.reason, f.classification) for f in full.failures] == [
        ("full@example.com", "mailbox-full", "soft")]
    gone = parse(_ses_mail({"notificationType": "Bounce", "mail": mail, "bounce": {
        "bounceType": "Permanent", "bounceSubType": "General",
        "bouncedRecipients": [{"emailAddress": "gone@example.com", "status": "5.1.1",
                               "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}))
    assert [(f.reason, f.classification) for f in gone.failures] == [("user-unknown", "hard")]


def test_a_providers_permanent_verdict_yields_to_words_of_a_passing_trouble() -> None:
    from worker.feedback.parse import Failure

    assert Failure("a@example.com", "failed", "", "552 mailbox full", permanent=True).classification == "soft"
    assert Failure("a@example.com", "failed", "", "unknown user, mailbox not found",
                   permanent=True).classification == "hard"
    assert Failure("a@example.com", "failed", "5.1.1", "550 5.1.1 user unknown",
                   permanent=False).classification == "soft"


def _parse_without_hanging(raw: bytes, deadline: float = 60.0):  # noqa: ANN202
    """parse() of hostile input, given a deadline no linear reading comes near (it takes about a
    second here) and a quadratic one far exceeds (hours): a guard against hanging the intake,
    not a measure of speed (that is `make bench`'s)."""
    done: list[object] = []
    reader = threading.Thread(target=lambda: done.append(parse(raw)), daemon=True)
    reader.start()
    reader.join(deadline)
    assert done, f"parse() still reading after {deadline:g} s: the intake would hang on this mail"
    return done[0]


@pytest.mark.parametrize("shape", ["30000 named in text", "10000 DSN blocks"])
def test_a_report_naming_thousands_of_recipients_is_read_for_its_first_hundred_quickly(shape: str) -> None:
    """A MiB of report (the most read) takes a second, not minutes."""
    if shape == "30000 named in text":
        raw = (b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered\r\n\r\n"
               + b"".join(b"<u%d@example.com>: 550 5.1.1 user unknown\r\n" % i for i in range(30000)))
    else:
        raw = _report("--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n" + "".join(
            f"Final-Recipient: rfc822; u{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n" for i in range(10000)))
    report = _parse_without_hanging(raw)
    assert len(report.failures) == 100 and report.failures[0].address == "u0@example.com"
    assert {f.classification for f in report.failures} == {"hard"}


def test_a_mebibyte_of_short_lines_after_a_bounce_is_read_in_seconds() -> None:
    raw = (b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\n\r\n<gone@example.com>: 550 5.1.1 user"
           b" unknown (in reply to RCPT TO command)\r\n\r\n" + b"x\n" * 500000)
    [failure] = _parse_without_hanging(raw).failures
    assert (failure.address, failure.classification) == ("gone@example.com", "hard")
