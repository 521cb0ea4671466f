"""Bounces, complaints and the brake with real parts: the worker sends through a private
Postfix relay; the "remote" aiosmtpd behind it answers 550 (or 451); Postfix writes the DSN
to the message's VERP return path and delivers it to its pipe transport running
`beanmail bounce`. ARF reports follow RFC 5965's own example."""

from __future__ import annotations

import json
import os
import re
import shutil
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

RETURNS = "returns.beanmail.example"
RETURN_PATH = f"bounces@{RETURNS}"
VERP_SECRET = "verp-secret-for-tests"
# Postfix runs a pipe as an unprivileged user, who cannot enter /root where this machine's venv
# interpreter lives: the pipe runs Debian's python3 (the same 3.11) on the venv's packages
PIPE_PYTHON = "/usr/bin/python3"


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
                                  pipe_argv=f"{PIPE_PYTHON} -m worker.cli --config {self.config} bounce"
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
    finally:
        f.close()
        dovecot.stop()
