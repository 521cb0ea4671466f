"""Bounces, complaints and the brake with real parts: the worker sends through a private
Postfix relay; the "remote" aiosmtpd behind it answers 550 (or 451); Postfix writes the DSN
to the message's VERP return path and delivers it to its pipe transport running
`beanmail bounce`. ARF reports follow RFC 5965's own example."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.client import connect
from worker.feedback import verp
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, VENV_BIN, bare_env, beanmail, run_burst
from .relay import Dovecot, PostfixRelay
from .servers import SmtpServer, wait_until
from .webhook_signers import Signers, post

RETURNS = "returns.beanmail.example"
RETURN_PATH = f"bounces@{RETURNS}"
VERP_SECRET = "verp-secret-for-tests"


@functools.cache
def pipe_python() -> str:
    """The interpreter for Postfix's pipe, which runs as nobody: the venv's own when nobody may
    run it; else (this machine's venv interpreter lives under /root, closed to others) Debian's
    python3, the same minor version, on the venv's packages."""
    probe = subprocess.run([shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--", sys.executable,
                            "-c", "import worker"], capture_output=True, cwd="/",
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return sys.executable if probe.returncode == 0 else "/usr/bin/python3"



class Feedback:
    """The worker's settings plus a TOML file saying the same, for the pipe's `beanmail bounce`
    (Postfix runs it as nobody with a bare environment), and a store nobody may write."""

    def __init__(self, settings: Settings, remote: SmtpServer, dovecot: Dovecot | None = None,
                 **extra: object) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="beanmail-feedback-"))
        store = self.dir / "store.sqlite3"
        Store(str(store)).close()  # SQLite run as root gives its -wal/-shm files the store's owner
        for path in (self.dir, store):
            shutil.chown(path, "nobody", "nogroup")
        values: dict[str, object] = {"store": str(store), "return_path": RETURN_PATH,
                                     "return_path_secret": VERP_SECRET, "beanstalk_url": settings.beanstalk_url,
                                     "log_format": "console", "soft_bounce_limit": 2, **extra}
        if dovecot is not None:  # the return path's mail goes to a mailbox, read by `bounces fetch`
            values["bounce_mailbox"] = dovecot.mailbox_url()
        self.config = self.dir / "beanmail.toml"
        self.config.write_text("[beanmail]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        os.chmod(self.config, 0o644)
        self.relay = PostfixRelay(f"127.0.0.1:{remote.port}", routes={RETURNS: dovecot.lmtp if dovecot else "beanmail:"},
                                  pipe_argv=f"{pipe_python()} -m worker.cli --config {self.config} bounce"
                                            " --recipient ${original_recipient}",
                                  pipe_environment={"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}).start()
        self.settings = settings.replace(smtp_url=self.relay.url, **{k: v for k, v in values.items()
                                                                     if k not in ("log_format",)})
        self.env = bare_env(self.settings, BEANMAIL_CONFIG=str(self.config))

    def store(self) -> Store:
        return Store(self.settings.store)

    def bounces(self) -> list[dict[str, object]]:
        return json.loads(beanmail("bounces", "--json", env=self.env).stdout)

    def wait_for_bounces(self, count: int, timeout: float = 30) -> list[dict[str, object]]:
        wait_until(lambda: len(self.store().bounces()) >= count, timeout,
                   f"{count} bounce(s) through the pipe\n{self.relay.maillog()[-3000:]}")
        return self.bounces()

    def close(self) -> None:
        self.relay.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def feedback(settings: Settings, smtp: SmtpServer) -> Iterator[Feedback]:
    f = Feedback(settings, smtp)
    yield f
    f.close()


def test_a_550_behind_postfix_comes_back_as_a_dsn_through_the_pipe_and_suppresses(
        feedback: Feedback, notifier: Notifier, smtp: SmtpServer) -> None:
    notifier.notify("welcome", "reject-me@example.com", {"name": "R"}, key="signup:1")
    notifier.notify("welcome", "ok@example.com", {"name": "O"}, key="signup:2")
    run_burst(feedback.settings)
    store = feedback.store()
    assert {store.deliveries(key=k)[0].outcome for k in ("signup:1", "signup:2")} == {"sent"}  # Postfix took both
    [delivered] = smtp.wait_for(1)
    local, _, domain = delivered.mail_from.partition("@")
    assert domain == RETURNS and local.startswith("bounces+")
    assert verp.verify(local.removeprefix("bounces+"), VERP_SECRET) == verp.token_id("signup:2", "ok@example.com")

    [bounce] = feedback.wait_for_bounces(1)
    assert (bounce["classification"], bounce["address"], bounce["key"], bounce["status"], bounce["source"]) == \
        ("hard", "reject-me@example.com", "signup:1", "5.1.1", "pipe")
    assert "550 5.1.1 No such user" in bounce["detail"]
    assert store.suppressed("reject-me@example.com")[0] == "bounce"
    assert store.suppressed("ok@example.com") is None
    log = beanmail("log", "--key", "signup:1", env=feedback.env).stdout
    assert "bounced" in log and "5.1.1" in log and "No such user" in log
    raw = beanmail("bounces", "show", str(bounce["id"]), env=feedback.env).stdout
    assert "Final-Recipient: rfc822; reject-me@example.com" in raw and "report-type=delivery-status" in raw

    # the next mail to that address goes nowhere
    notifier.notify("welcome", "reject-me@example.com", {"name": "R"}, key="signup:3")
    run_burst(feedback.settings)
    assert store.deliveries(key="signup:3")[0].outcome == "skipped"

    # a forged copy (its token altered), a genuine token for a message never sent, and a bounce
    # with no return path of ours: recorded as unmatched, nobody suppressed
    real = re.search(r"bounces\+([a-z2-7]+)@", raw).group(1)
    for replacement in (f"bounces+{real[:-1]}{'a' if real[-1] != 'a' else 'b'}@",
                        f"bounces+{verp.make_token('never-sent', 'ok@example.com', VERP_SECRET)}@", "postmaster@"):
        text = raw.replace(f"bounces+{real}@", replacement).replace("reject-me@example.com", "ok@example.com")
        out = subprocess_bounce(feedback, text)
        assert out.startswith("unmatched"), out
    assert store.suppressed("ok@example.com") is None
    assert [b["classification"] for b in feedback.bounces()][:3] == ["unmatched"] * 3
    # an operator undoes a wrong suppression
    assert "removed reject-me@example.com" in beanmail("suppress", "remove", "reject-me@example.com", env=feedback.env).stdout
    assert store.suppressed("reject-me@example.com") is None


def subprocess_bounce(feedback: Feedback, text: str, recipient: str = "") -> str:
    import subprocess

    args = [str(VENV_BIN / "beanmail"), "bounce"] + (["--recipient", recipient] if recipient else [])
    proc = subprocess.run(args, input=text.encode(), env=feedback.env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip().splitlines()[-1]  # after the log lines: what it did


def test_soft_bounces_suppress_after_the_configured_count(feedback: Feedback, notifier: Notifier) -> None:
    for n in (1, 2):  # aiosmtpd answers 451; with no queue lifetime Postfix returns it at once
        notifier.notify("welcome", "tempfail-soft@example.com", {"name": "T"}, key=f"soft:{n}")
        run_burst(feedback.settings)
        bounces = feedback.wait_for_bounces(n)
        assert bounces[0]["classification"] == "soft" and bounces[0]["status"].startswith("4.")
        suppressed = feedback.store().suppressed("tempfail-soft@example.com")
        assert (suppressed is not None) == (n == 2)  # soft_bounce_limit = 2 within the window
    assert "2 soft bounces" in suppressed[1]


ARF_EXAMPLE = """\
From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <abuse@example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{mail_from}>
Original-Rcpt-To: <{rcpt_to}>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1
Authentication-Results: mail.example.com;
               spf=fail smtp.mail=somespammer@example.com
Reported-Domain: example.net
Reported-Uri: http://example.net/earn_money.html
Reported-Uri: mailto:user@example.com
Removal-Recipient: user@example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
Received: from mailserver.example.net (mailserver.example.net
        [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;
        Thu, 08 Mar 2005 14:00:00 -0400
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
--part1_13d.2e68ed54_boundary--
"""


def test_an_arf_complaint_suppresses_with_source_complaint_and_urgent_mail_still_goes(
        feedback: Feedback, notifier: Notifier, smtp: SmtpServer) -> None:
    notifier.notify("welcome", "carol@example.com", {"name": "C"}, priority="bulk", key="news-1:carol@example.com")
    run_burst(feedback.settings)
    [sent] = smtp.wait_for(1)
    report = ARF_EXAMPLE.replace("{mail_from}", sent.mail_from).replace("{rcpt_to}", "carol@example.com")
    assert subprocess_bounce(feedback, report).startswith("complaint carol@example.com news-1:carol@example.com")
    store = feedback.store()
    assert store.suppressed("carol@example.com")[0] == "complaint"
    assert "complaint (abuse)" in store.deliveries(key="news-1:carol@example.com")[0].reason
    # the same report with its return path forged: recorded, nobody suppressed
    assert subprocess_bounce(feedback, report.replace(sent.mail_from, "bounces+aaaa@" + RETURNS)
                             .replace("carol@", "dave@")).startswith("unmatched")
    assert store.suppressed("dave@example.com") is None
    # RFC 5965 "not-spam" is no complaint
    assert subprocess_bounce(feedback, report.replace("Feedback-Type: abuse", "Feedback-Type: not-spam")) \
        .startswith("ignored")
    notifier.notify("welcome", "carol@example.com", {"name": "C"}, priority="bulk", key="news-2:carol@example.com")
    notifier.notify("password_reset", "carol@example.com", {"reset_url": "https://x.example/r"},
                    priority="urgent", key="reset:carol")
    run_burst(feedback.settings)
    assert store.deliveries(key="news-2:carol@example.com")[0].outcome == "skipped"
    assert store.deliveries(key="reset:carol")[0].outcome == "sent"


def tube_paused(settings: Settings, tube: str) -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return int(c.stats_tube(tube)["pause-time-left"])


def test_the_brake_trips_on_a_burst_of_bounces_holds_bulk_mail_and_fanout_while_urgent_mail_goes(
        settings: Settings, smtp: SmtpServer, notifier: Notifier) -> None:
    f = Feedback(settings, smtp, brake_window=10, brake_min_sends=10)
    # beanstalkd keeps a tube (and its pause) while someone watches it: in production the
    # workers and `beanmail fanout` do; here this connection stands in for them
    watcher = connect(settings.beanstalk_url, encoding=None, watch=["mail.bulk", "mailout"])
    try:
        recipients = [f"reader{n}@example.com" for n in range(8)] + ["reject-1@example.com", "reject-2@example.com"]
        notifier.mailout("welcome", recipients, {"name": "reader"}, key="news-9")
        fanout(f)
        run_burst(f.settings)
        assert len(smtp.wait_for(8)) == 8
        f.wait_for_bounces(2)
        store = f.store()
        engaged, reason, _ = store.brake()
        assert engaged and "bounce rate" in reason and "passes 5.0%" in reason
        status = beanmail("status", env=f.env).stdout
        assert "brake: ON" in status and "bounce rate" in status
        assert json.loads(beanmail("status", "--json", env=f.env).stdout)["brake"]["engaged"] is True
        assert tube_paused(f.settings, "mail.bulk") > 0 and tube_paused(f.settings, "mailout") > 0

        notifier.notify("welcome", "late@example.com", {"name": "L"}, priority="bulk", key="news-10:late@example.com")
        notifier.notify("password_reset", "urgent@example.com", {"reset_url": "https://x.example/r"},
                        priority="urgent", key="reset:urgent")
        run_burst(f.settings)
        assert [m.rcpt_tos for m in smtp.wait_for(9)][8:] == [["urgent@example.com"]]
        assert store.deliveries(key="news-10:late@example.com") == []  # held in its paused tube

        out = beanmail("resume", env=f.env).stdout
        assert "brake released" in out
        assert tube_paused(f.settings, "mail.bulk") == 0 and not store.brake()[0]
        assert "brake: off" in beanmail("status", env=f.env).stdout
        run_burst(f.settings)
        assert store.deliveries(key="news-10:late@example.com")[0].outcome == "sent"
    finally:
        watcher.close()
        f.close()


def fanout(f: Feedback) -> None:
    from worker.fanout import Fanout
    from worker.loop import Worker
    from producer.envelope import MAILOUT_TUBE

    store = f.store()
    assert Worker(f.settings, Fanout(f.settings), store, tubes=(MAILOUT_TUBE,)).run(burst=True) == 0
    store.close()


def test_bounces_fetch_reads_postfix_dsns_from_dovecot_once_and_flags_them(
        settings: Settings, smtp: SmtpServer, notifier: Notifier) -> None:
    import imaplib
    import ssl

    dovecot = Dovecot().start()
    f = Feedback(settings, smtp, dovecot=dovecot)
    try:
        def mailbox() -> imaplib.IMAP4_SSL:
            imap = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                                     ssl_context=ssl.create_default_context(cafile=str(dovecot.cert)))
            imap.login("bounces", dovecot.password)
            imap.select("INBOX")
            return imap

        def in_mailbox() -> int:
            imap = mailbox()
            try:
                return len(imap.uid("SEARCH", None, "ALL")[1][0].split())
            finally:
                imap.logout()

        notifier.notify("welcome", "reject-imap@example.com", {"name": "I"}, key="imap:1")
        run_burst(f.settings)
        wait_until(in_mailbox, 30, f"the DSN in dovecot\n{f.relay.maillog()[-2000:]}")
        first = json.loads(beanmail("bounces", "fetch", "--json", env=f.env).stdout.strip().splitlines()[-1])
        assert first == {"messages": 1, "hard": 1}
        store = f.store()
        assert store.suppressed("reject-imap@example.com")[0] == "bounce"
        [bounce] = store.bounces()
        assert (bounce["source"], bounce["key"], bounce["status"]) == ("imap", "imap:1", "5.1.1")
        again = json.loads(beanmail("bounces", "fetch", "--json", env=f.env).stdout.strip().splitlines()[-1])
        assert again == {"messages": 0}  # handled once
        imap = mailbox()
        flags = imap.uid("FETCH", imap.uid("SEARCH", None, "ALL")[1][0].split()[0], "(FLAGS)")[1][0]
        imap.logout()
        assert b"$BeanmailHandled" in flags and b"\\Seen" in flags
        # ?move=Folder moves what was handled out of the inbox instead
        notifier.notify("welcome", "reject-imap2@example.com", {"name": "I"}, key="imap:2")
        run_burst(f.settings)
        wait_until(lambda: in_mailbox() == 2, 30, "the second DSN in dovecot")
        env = {**f.env, "BEANMAIL_BOUNCE_MAILBOX": dovecot.mailbox_url() + "&move=Handled"}
        moved = json.loads(beanmail("bounces", "fetch", "--json", env=env).stdout.strip().splitlines()[-1])
        assert moved == {"messages": 1, "hard": 1}  # the first, flagged before, is not taken again
        assert store.suppressed("reject-imap2@example.com") is not None
        imap = mailbox()
        assert len(imap.uid("SEARCH", None, "ALL")[1][0].split()) == 1  # only the flagged first is left
        imap.select('"Handled"')
        assert len(imap.uid("SEARCH", None, "ALL")[1][0].split()) == 1
        imap.logout()
    finally:
        f.close()
        dovecot.stop()


# -- provider webhooks: payloads as the providers document them, signed as they sign them ----------
SES_BOUNCE = {  # Amazon SES notification examples: "Bounce notification ... with a DSN"
    "notificationType": "Bounce",
    "bounce": {"bounceType": "Permanent", "reportingMTA": "dns; email.example.com", "bounceSubType": "General",
               "bouncedRecipients": [{"emailAddress": "jane@example.com", "status": "5.1.1", "action": "failed",
                                      "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User"}],
               "timestamp": "2016-01-27T14:59:38.237Z", "remoteMtaIp": "127.0.2.0",
               "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000"},
    "mail": {"timestamp": "2016-01-27T14:59:38.237Z", "source": "john@example.com",
             "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com", "sourceIp": "127.0.3.0",
             "sendingAccountId": "123456789012", "destination": ["jane@example.com"], "headersTruncated": False,
             "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"},
}
SENDGRID_SPAMREPORT = {  # SendGrid Event Webhook reference: "spamreport"
    "email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
    "event": "spamreport", "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
}
POSTMARK_BOUNCE = {  # Postmark bounce webhook
    "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807, "Type": "HardBounce",
    "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"a_key": "a_value", "b_key": "b_value"}, "ServerID": 23,
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Details": "Test bounce details", "Email": "john@example.com", "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": True, "Inactive": True, "CanActivate": True,
    "Subject": "Test subject", "Content": "<Full dump of bounce>",
}
MAILGUN_FAILED = {  # Mailgun webhooks: a permanent failure
    "signature": {"timestamp": "1529006854", "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
                  "signature": "d2271d12299f6592d9d44cd9d250f0704e4674c30d79d07c47a66f95ce71cf55"},
    "event-data": {"event": "failed", "timestamp": 1529006854.329574, "id": "Z9mAbzTQS8C4dePkXvU5eg",
                   "severity": "permanent", "reason": "bounce", "recipient": "alice@example.com",
                   "log-level": "error", "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"},
                   "delivery-status": {"attempt-no": 1, "code": 550, "enhanced-code": "5.1.1",
                                       "message": "5.1.1 The email account that you tried to reach does not exist",
                                       "description": "", "session-seconds": 0.1},
                   "message": {"headers": {"to": "Alice <alice@example.com>", "from": "Bob <bob@example.com>",
                                           "message-id": "20130503192659.13651.20287@example.com",
                                           "subject": "Test permanent_fail webhook"}, "attachments": [], "size": 111}},
}


def test_provider_webhooks_tie_signed_events_to_deliveries_and_refuse_forged_ones(
        settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    import threading
    import time
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from worker.feedback.webhooks import with_webhooks

    signers = Signers()
    s = settings.replace(return_path=RETURN_PATH, return_path_secret=VERP_SECRET, ses_topic_arns=signers.topic,
                         sendgrid_webhook_key=signers.sendgrid_public, postmark_webhook_password="pm-pass",
                         mailgun_signing_key=signers.mailgun_key)
    sent = {}
    for n, provider in enumerate(("ses", "sendgrid", "postmark", "mailgun")):
        notifier.notify("welcome", f"{provider}-user@example.com", {"name": provider}, key=f"hook:{provider}")
        run_burst(s.replace(relay_provider=provider))
        sent[provider] = smtp.wait_for(n + 1)[n]
    header = {p: sent[p].message[h] for p, h in (("sendgrid", "X-SMTPAPI"), ("postmark", "X-PM-Metadata-beanmail"),
                                                 ("mailgun", "X-Mailgun-Variables"))}
    sendgrid_token = json.loads(header["sendgrid"])["unique_args"]["beanmail"]
    mailgun_token = json.loads(header["mailgun"])["beanmail"]

    store = Store(s.store)
    def other_app(environ: dict[str, object], start_response: object) -> list[bytes]:  # e.g. the console
        start_response("418 I'm a teapot", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"not a webhook"]

    app = with_webhooks(other_app, s, store=store, certificates=lambda url: signers.sns_cert)
    server = make_server("127.0.0.1", 0, app,
                         handler_class=type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}/webhooks"
    now = str(int(time.time()))
    try:
        # forged or unsigned requests: refused, nothing recorded
        ses_ours = json.loads(json.dumps(SES_BOUNCE))
        ses_ours["mail"]["source"] = sent["ses"].mail_from
        ses_ours["bounce"]["bouncedRecipients"][0]["emailAddress"] = "ses-user@example.com"
        tampered = json.loads(signers.sns(ses_ours))
        tampered["Message"] = tampered["Message"].replace("ses-user@", "someone-else@")
        sg_body, sg_headers = signers.sendgrid([{**SENDGRID_SPAMREPORT, "email": "sendgrid-user@example.com",
                                                 "beanmail": sendgrid_token}], now)
        assert post(f"{base}/ses", json.dumps(tampered).encode())[0] == 403
        assert post(f"{base}/sendgrid", sg_body.replace(b"spamreport", b"spamreport "), sg_headers)[0] == 403
        assert post(f"{base}/postmark", json.dumps(POSTMARK_BOUNCE).encode(),
                    {"Authorization": "Basic " + base64.b64encode(b"postmark:wrong").decode()})[0] == 401
        assert post(f"{base}/mailgun", json.dumps(MAILGUN_FAILED).encode())[0] == 403  # the docs' old signature
        assert store.bounces() == []
        assert post(f"http://127.0.0.1:{server.server_port}/other", b"{}")[0] == 418  # the mounting app's own

        # the documented payloads, signed: the docs' own SES example names no message of ours
        assert post(f"{base}/ses", signers.sns(SES_BOUNCE)) == (200, {"handled": ["unmatched"]})
        assert store.suppressed("jane@example.com") is None
        assert post(f"{base}/ses", signers.sns(ses_ours)) == (200, {"handled": ["hard"]})
        assert post(f"{base}/sendgrid", sg_body, sg_headers) == (200, {"handled": ["complaint"]})
        postmark = {**POSTMARK_BOUNCE, "Email": "postmark-user@example.com",
                    "Metadata": {**POSTMARK_BOUNCE["Metadata"], "beanmail": header["postmark"]}}
        assert post(f"{base}/postmark", json.dumps(postmark).encode(),
                    {"Authorization": "Basic " + base64.b64encode(b"postmark:pm-pass").decode()}) == \
            (200, {"handled": ["hard"]})
        mailgun = json.loads(json.dumps(MAILGUN_FAILED))
        mailgun["event-data"]["recipient"] = "mailgun-user@example.com"
        mailgun["event-data"]["user-variables"]["beanmail"] = mailgun_token
        assert post(f"{base}/mailgun", signers.mailgun(mailgun, now)) == (200, {"handled": ["hard"]})
    finally:
        server.shutdown()
        server.server_close()
    for provider, source in (("ses", "bounce"), ("sendgrid", "complaint"), ("postmark", "bounce"), ("mailgun", "bounce")):
        assert store.suppressed(f"{provider}-user@example.com")[0] == source, provider
        [row] = [b for b in store.bounces() if b["key"] == f"hook:{provider}"]
        assert row["source"] == f"webhook:{provider}"
    assert store.deliveries(key="hook:ses")[0].outcome == "bounced"


QMAIL_BOUNCE = """\
Return-Path: <>
From: MAILER-DAEMON@mail.example.net
To: {return_path}
Subject: failure notice

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{address}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Subject: Welcome
"""


def test_a_non_standard_bounce_is_read_by_flufl_bounce_and_tied_by_its_token(
        settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    s = settings.replace(return_path=RETURN_PATH, return_path_secret=VERP_SECRET)
    notifier.notify("welcome", "gone@example.com", {"name": "G"}, key="qmail:1")
    run_burst(s)
    [sent] = smtp.wait_for(1)
    env = bare_env(s, BEANMAIL_RETURN_PATH=RETURN_PATH, BEANMAIL_RETURN_PATH_SECRET=VERP_SECRET)
    proc = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], env=env, capture_output=True, timeout=60,
                          input=QMAIL_BOUNCE.format(return_path=sent.mail_from, address="gone@example.com").encode())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip().splitlines()[-1] == "hard gone@example.com qmail:1 suppressed"
    store = Store(s.store)
    [row] = store.bounces()
    assert (row["kind"], row["status"]) == ("detector", "5.1.1")
    assert store.suppressed("gone@example.com")[0] == "bounce"
    # the store down: the MTA is told to keep the report and try again later (EX_TEMPFAIL)
    env["BEANMAIL_STORE"] = "postgresql://beanmail@127.0.0.1:1/none"
    down = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], env=env, capture_output=True, timeout=60,
                          input=b"Subject: x\r\n\r\nx\r\n")
    assert down.returncode == 75, down.stderr


def test_the_feedback_tables_on_both_store_backends(store_location: str) -> None:
    """What intake and the brake ask of the store, on SQLite and on PostgreSQL."""
    store = Store(store_location)
    for n in range(4):
        key = f"news:{n}"
        store.claim(key, f"r{n}@example.com", "welcome", lease=30)
        store.finish(key, f"r{n}@example.com", "welcome", "sent")
        store.remember_message(f"tok{n}", key, f"r{n}@example.com", "welcome", bulk=True)
    store.remember_message("tok0", "news:0", "r0@example.com", "welcome", bulk=True)  # a retry: one row
    assert store.message_for_token("tok1") == ("news:1", "r1@example.com", "welcome", True)
    assert store.message_for_token("nope") is None
    assert store.note_bounce("news:1", "bounced after it was accepted (hard): 5.1.1", "550 5.1.1 No such user")
    store.note_complaint("tok2", "news:2", "complaint (abuse) after delivery")
    assert store.bulk_feedback(10) == (4, 1, 1)
    assert store.bulk_feedback(2)[0] == 2
    bid = store.record_bounce(source="pipe", kind="dsn", classification="soft", address="R3@example.com",
                              key="news:3", status="4.2.2", detail="mailbox full", raw="Subject: x\x00\r\n\r\nbody")
    assert store.soft_bounces("r3@example.com", since=0) == 1 and store.soft_bounces("r3@example.com", since=2e9) == 0
    assert store.bounces(address="r3@example.com")[0]["id"] == bid and "body" in store.bounce_raw(bid)
    assert store.brake() == (False, "", 0.0)
    assert store.set_brake(True, "bounce rate 1/4") and not store.set_brake(True, "again")
    assert store.brake()[:2] == (True, "bounce rate 1/4")
    assert store.set_brake(False, "resumed by operator") and store.bulk_feedback(10, store.brake()[2]) == (0, 0, 0)
    store.close()


def test_bulk_mail_refused_at_once_trips_the_brake_without_any_dsn(settings: Settings, notifier: Notifier,
                                                                  smtp: SmtpServer) -> None:
    """A 550 heard in the SMTP session itself (as direct MX delivery hears most): the worker
    judges the brake then, with no DSN to wait for."""
    s = settings.replace(brake_window=4, brake_min_sends=4, return_path=RETURN_PATH, return_path_secret=VERP_SECRET)
    notifier.mailout("welcome", ["a@example.com", "b@example.com", "c@example.com", "reject-d@example.com"],
                     {"name": "x"}, key="news-5")
    watcher = connect(s.beanstalk_url, encoding=None, watch=["mail.bulk", "mailout"])
    try:
        from producer.envelope import MAILOUT_TUBE
        from worker.fanout import Fanout
        from worker.loop import Worker

        store = Store(s.store)
        assert Worker(s, Fanout(s), store, tubes=(MAILOUT_TUBE,)).run(burst=True) == 0
        run_burst(s)
        assert store.deliveries(key="news-5:reject-d@example.com")[0].outcome == "bounced"
        engaged, reason, _ = store.brake()
        assert engaged and reason.startswith("bounce rate 1/4 = 25.0%")
        assert tube_paused(s, "mail.bulk") > 0
    finally:
        watcher.close()
