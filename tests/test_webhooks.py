"""The feedback paths against a hostile sender, and suppression that never silences what a
user must get: malformed bodies on every webhook endpoint, SNS certificates from anywhere but
Amazon's SNS hosts, old or replayed notifications, soft bounces counted per message and lapsing,
urgent mail to a soft-suppressed address, and a recipient of a shared message forging a report
about the other. Webhooks over real HTTP (wsgiref on loopback), the worker with real beanstalkd
and SMTP, `beanmail bounce` and `beanmail suppress list` as the commands a user runs."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from producer import Notifier
from worker.feedback import verp
from worker.feedback.webhooks import WebhookApp
from worker.settings import Settings
from worker.store import Store

from .conftest import VENV_BIN, bare_env, run_burst
from .servers import SmtpServer
from .webhook_signers import Signers, post

RETURN_PATH = "bounces@returns.beanmail.example"
SECRET = "verp-secret-for-webhook-tests"
POSTMARK_AUTH = {"Authorization": "Basic " + base64.b64encode(b"postmark:pm-pass").decode()}


class Hooks:
    """The webhook app on a loopback port, over a store of its own, recording every SNS
    certificate URL it asked for."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.signers = Signers()
        self.settings = Settings().replace(
            store=str(tmp_path / "hooks.sqlite3"), return_path=RETURN_PATH, return_path_secret=SECRET,
            ses_topic_arns=self.signers.topic, sendgrid_webhook_key=self.signers.sendgrid_public,
            postmark_webhook_password="pm-pass", mailgun_signing_key=self.signers.mailgun_key, **settings)
        self.store = Store(self.settings.store)
        self.fetched: list[str] = []

        def certificates(url: str) -> bytes:
            self.fetched.append(url)
            return self.signers.sns_cert
        self.app = WebhookApp(self.settings, self.store, certificates=certificates)
        self.server = make_server("127.0.0.1", 0, self.app,
                                  handler_class=type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None}))
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def message(self, key: str, *recipients: str) -> str:
        """A message beanmail sent (as Outbound.prepare records it): its VERP token."""
        joined = ",".join(recipients)
        self.store.remember_message(verp.token_id(key, joined), key, joined, "welcome", False)
        self.store.claim(key, recipients[0], "welcome", lease=30)
        self.store.finish(key, recipients[0], "welcome", "sent")
        return verp.make_token(key, joined, SECRET)

    def ses_bounce(self, token: str, address: str, bounce_type: str = "Transient", **sns: Any) -> bytes:
        # a permanent bounce for an address that is gone; a transient one for a full mailbox (a
        # "Permanent" whose words say the mailbox is full is soft: the classifier reads the words)
        gone = bounce_type == "Permanent"
        message = {"notificationType": "Bounce",
                   "bounce": {"bounceType": bounce_type, "bounceSubType": "NoEmail" if gone else "MailboxFull",
                              "bouncedRecipients": [{
                                  "emailAddress": address, "status": "5.1.1" if gone else "4.2.2", "action": "failed",
                                  "diagnosticCode": "smtp; 550 5.1.1 user unknown" if gone
                                  else "smtp; 452 4.2.2 Mailbox full"}]},
                   "mail": {"source": verp.return_path(RETURN_PATH, token), "destination": [address]}}
        return self.signers.sns(message, **sns)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[Hooks]:
    h = Hooks(tmp_path)
    yield h
    h.close()


DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED = {"a list": b"[1, 2]", "a string": b'"a string"', "null": b"null", "a number": b"42",
             "deep nesting": DEEP, "not UTF-8": b'{"a": "\xff\xfe"}', "empty": b"", "cut short": b'{"a": ',
             "an empty list": b"[]"}


def test_every_malformed_body_on_every_endpoint_is_refused_400_with_a_reason_never_500(hooks: Hooks) -> None:
    now = str(int(time.time()))
    answers = {}
    for provider in ("ses", "sendgrid", "postmark", "mailgun"):
        for name, body in MALFORMED.items():
            headers = (hooks.signers.sendgrid_headers(body, now) if provider == "sendgrid"
                       else POSTMARK_AUTH if provider == "postmark" else {})
            if provider == "sendgrid" and name == "an empty list":
                continue  # a batch of no events is a valid (empty) batch
            answers[provider, name] = post(f"{hooks.url}/{provider}", body, headers)
    # shapes that parse as JSON but hold the wrong types where the provider puts its fields
    token = hooks.message("shape:1", "zoe@example.com")
    good_sig = {"timestamp": now, "token": "t" * 50, "signature": ""}
    odd = {
        ("ses", "Message an object of lists"): hooks.signers.sns({"notificationType": "Bounce", "bounce": []}),
        ("ses", "a recipient a number"): hooks.signers.sns({"notificationType": "Bounce", "bounce": {
            "bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": 7}]}}),
        ("ses", "SigningCertURL a list"): json.dumps({"Type": "Notification", "SigningCertURL": ["x"]}).encode(),
        ("postmark", "Email a list"): json.dumps({"RecordType": "Bounce", "Type": "HardBounce", "Email": ["x"]}).encode(),
        ("postmark", "Metadata a string"): json.dumps({"RecordType": "SpamComplaint", "Email": "zoe@example.com",
                                                       "Metadata": "beanmail"}).encode(),
        ("mailgun", "signature a string"): json.dumps({"signature": "x", "event-data": {}}).encode(),
        ("mailgun", "event-data a list"): hooks.signers.mailgun({"signature": good_sig, "event-data": []}, now),
        ("mailgun", "delivery-status a list"): hooks.signers.mailgun({"signature": good_sig, "event-data": {
            "event": "failed", "severity": "permanent", "recipient": "zoe@example.com",
            "user-variables": {"beanmail": token}, "delivery-status": []}}, now),
    }
    for (provider, name), body in odd.items():
        answers[provider, name] = post(f"{hooks.url}/{provider}", body, POSTMARK_AUTH if provider == "postmark" else {})
    for body in (b"[1]", json.dumps([{"event": "bounce", "email": None}]).encode()):
        answers["sendgrid", body.decode()[:30]] = post(f"{hooks.url}/sendgrid", body,
                                                       hooks.signers.sendgrid_headers(body, now))
    wrong = {k: v for k, v in answers.items() if v[0] != 400 or not str(v[1].get("error", "")).startswith("not a ")}
    assert not wrong, wrong
    assert len(answers) == 4 * len(MALFORMED) - 1 + len(odd) + 2
    assert "nested too deeply" in answers["ses", "deep nesting"][1]["error"]
    assert "not UTF-8" in answers["mailgun", "not UTF-8"][1]["error"]
    assert hooks.store.bounces() == [] and hooks.store.suppression_list() == []


def test_an_sns_certificate_is_trusted_only_from_sns_region_amazonaws_com_over_https(hooks: Hooks) -> None:
    token = hooks.message("cert:1", "zoe@example.com")
    good = "https://sns.eu-west-2.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
    for url in ("https://sns.s3.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",  # anyone's bucket
                "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
                "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-0123456789abcdef.pem",
                "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-0123456789abcdef.pem",
                "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
                "https://sns.us-east-1.amazonaws.com/somebody/else.pem",
                "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem?x=1",
                "https://sqs.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"):
        status, answer = post(f"{hooks.url}/ses", hooks.ses_bounce(token, "zoe@example.com", "Permanent", cert_url=url))
        assert (status, answer["error"]) == (403, f"SigningCertURL {url!r} is not Amazon SNS's"), url
    assert hooks.fetched == [] and hooks.store.bounces() == []
    assert post(f"{hooks.url}/ses", hooks.ses_bounce(token, "zoe@example.com", "Permanent", cert_url=good)) == \
        (200, {"handled": ["hard"]})
    assert hooks.fetched == [good]


def test_an_sns_notification_signed_over_an_hour_ago_is_refused(hooks: Hooks) -> None:
    token = hooks.message("old:1", "zoe@example.com")
    now = time.time()
    for when in (1453906778.0, now - 7200, now + 7200):  # the SES guide's own 2016, two hours either way
        status, answer = post(f"{hooks.url}/ses", hooks.ses_bounce(token, "zoe@example.com", "Permanent", timestamp=when))
        assert status == 403 and answer["error"].startswith("signed timestamp is"), answer
    assert hooks.store.bounces() == []
    assert post(f"{hooks.url}/ses", hooks.ses_bounce(token, "zoe@example.com", "Permanent", timestamp=now - 1800)) == \
        (200, {"handled": ["hard"]})


def test_a_replayed_event_counts_once_for_every_provider(hooks: Hooks) -> None:
    s = hooks.signers
    now = str(int(time.time()))
    ses = hooks.ses_bounce(hooks.message("replay:ses", "ses@example.com"), "ses@example.com")
    answers = [post(f"{hooks.url}/ses", ses) for _ in range(6)]  # one genuine SES soft bounce, replayed
    assert answers == [(200, {"handled": ["soft"]})] + [(200, {"handled": ["replay"]})] * 5
    sendgrid = [{"email": "sg@example.com", "event": "bounce", "type": "blocked", "sg_event_id": "Ev-1",
                 "beanmail": hooks.message("replay:sg", "sg@example.com")}]
    postmark = json.dumps({"RecordType": "Bounce", "ID": 77, "Type": "SoftBounce", "Email": "pm@example.com",
                           "Metadata": {"beanmail": hooks.message("replay:pm", "pm@example.com")}}).encode()
    mailgun = s.mailgun({"signature": {"timestamp": now, "token": "c" * 50, "signature": ""}, "event-data": {
        "event": "failed", "severity": "permanent", "reason": "old", "id": "mg-1", "timestamp": 1.5,
        "recipient": "mg@example.com", "user-variables": {"beanmail": hooks.message("replay:mg", "mg@example.com")}}}, now)
    for _ in range(2):
        body, headers = s.sendgrid(sendgrid, now)
        post(f"{hooks.url}/sendgrid", body, headers)
        post(f"{hooks.url}/postmark", postmark, POSTMARK_AUTH)
        post(f"{hooks.url}/mailgun", mailgun)
    rows = hooks.store.bounces()
    assert sorted(r["address"] for r in rows) == ["mg@example.com", "pm@example.com", "ses@example.com", "sg@example.com"]
    assert all(r["classification"] == "soft" for r in rows)
    assert hooks.store.suppression_list() == []  # one soft bounce each: nobody suppressed


def test_soft_bounces_count_per_message_and_their_suppression_lapses(tmp_path: Path) -> None:
    hooks = Hooks(tmp_path, soft_bounce_limit=2, soft_suppression_days=3)
    try:
        first = hooks.message("soft:1", "full@example.com")
        for n in range(5):  # the same message reported five times (five notifications, five ids)
            assert post(f"{hooks.url}/ses", hooks.ses_bounce(first, "full@example.com", message_id=f"m-{n}")) == \
                (200, {"handled": ["soft"]})
        assert hooks.store.suppressed("full@example.com") is None
        second = hooks.message("soft:2", "full@example.com")
        post(f"{hooks.url}/ses", hooks.ses_bounce(second, "full@example.com", message_id="m-5"))
        assert hooks.store.suppressed("full@example.com")[0] == "soft-bounce"
        [(address, source, reason, _, until)] = hooks.store.suppression_list()
        assert (address, source) == ("full@example.com", "soft-bounce") and reason.startswith("2 soft bounces")
        assert abs(until - (time.time() + 3 * 86400)) < 60
        listing = subprocess.run([str(VENV_BIN / "beanmail"), "suppress", "list"], capture_output=True, text=True,
                                 env=bare_env(None, BEANMAIL_STORE=hooks.settings.store), timeout=60, check=True)
        assert listing.stdout.split("  ")[:3] == ["full@example.com", "soft-bounce",
                                                 time.strftime("until %Y-%m-%d %H:%M", time.localtime(until))]
        # a hard bounce after it holds for good; a later soft one does not make it lapse
        post(f"{hooks.url}/ses", hooks.ses_bounce(hooks.message("soft:3", "full@example.com"), "full@example.com",
                                                  "Permanent", message_id="m-6"))
        post(f"{hooks.url}/ses", hooks.ses_bounce(hooks.message("soft:4", "full@example.com"), "full@example.com",
                                                  message_id="m-7"))
        assert hooks.store.suppression_list()[0][1::3] == ("bounce", 0)
    finally:
        hooks.close()


def test_urgent_mail_reaches_a_soft_suppressed_address_and_other_mail_does_once_it_lapses(
        settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    store = Store(settings.store)
    store.suppress("full@example.com", "2 soft bounces within 86400s", "soft-bounce", until=time.time() + 3600)
    store.suppress("gone@example.com", "hard bounce 5.1.1", "bounce")
    notifier.notify("welcome", "full@example.com", {"name": "F"}, key="normal:1")
    notifier.notify("password_reset", "full@example.com", {"reset_url": "https://x.example/r"}, priority="urgent",
                    key="reset:1")
    notifier.notify("password_reset", "gone@example.com", {"reset_url": "https://x.example/r"}, priority="urgent",
                    key="reset:2")
    run_burst(settings)
    [sent] = smtp.wait_for(1)
    assert sent.rcpt_tos == ["full@example.com"] and "reset" in sent.message["Subject"].lower()
    assert store.deliveries(key="normal:1")[0].outcome == "skipped"
    assert "suppressed (soft-bounce)" in store.deliveries(key="normal:1")[0].reason
    assert store.deliveries(key="reset:2")[0].outcome == "skipped"  # a hard bounce stops even urgent mail
    store.suppress("full@example.com", "2 soft bounces within 86400s", "soft-bounce", until=time.time() - 1)
    assert store.suppressed("full@example.com") is None and store.suppression_list()[0][0] == "gone@example.com"
    notifier.notify("welcome", "full@example.com", {"name": "F"}, key="normal:2")
    run_burst(settings)
    assert smtp.wait_for(2)[1].rcpt_tos == ["full@example.com"]
    store.close()


DSN = """\
From: MAILER-DAEMON@mx.example.net
To: {return_path}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {victim}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 No such user

--b1--
"""
ARF = """\
From: <abuse@example.net>
To: {return_path}
Subject: FW: report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b2"

--b2
Content-Type: text/plain

This is an abuse report.

--b2
Content-Type: message/feedback-report

Feedback-Type: abuse
Version: 1
Original-Mail-From: <{return_path}>
Original-Rcpt-To: <{victim}>

--b2--
"""


def test_a_recipient_of_a_shared_message_cannot_get_the_other_suppressed(
        settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    """alice and bob got one message (one transaction, one return path); alice forges a DSN and
    an ARF report naming bob with the return path of her copy."""
    s = settings.replace(return_path=RETURN_PATH, return_path_secret=SECRET)
    notifier.send_raw(b"From: App <app@beanmail.example>\r\nTo: alice@example.com, bob@example.com\r\n"
                      b"Subject: minutes\r\n\r\nthe minutes\r\n", ["alice@example.com", "bob@example.com"], key="shared:1")
    run_burst(s)
    [sent] = smtp.wait_for(1)
    assert sorted(sent.rcpt_tos) == ["alice@example.com", "bob@example.com"]
    env = bare_env(s, BEANMAIL_RETURN_PATH=RETURN_PATH, BEANMAIL_RETURN_PATH_SECRET=SECRET)
    for forged in (DSN, ARF):
        report = forged.format(return_path=sent.mail_from, victim="bob@example.com")
        proc = subprocess.run([str(VENV_BIN / "beanmail"), "bounce"], input=report.encode(), env=env,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().strip().splitlines()[-1].startswith("unmatched bob@example.com"), proc.stdout
    store = Store(s.store)
    assert store.suppression_list() == []
    assert [r["classification"] for r in store.bounces()] == ["unmatched", "unmatched"]
    assert "shared by 2 recipients" in store.bounces()[0]["detail"]
    assert store.deliveries(key="shared:1")[0].outcome == "sent"
    store.close()


def test_the_webhook_and_suppression_tables_on_both_store_backends(store_location: str) -> None:
    store = Store(store_location)
    assert store.first_webhook_event("ses", "m-1") and not store.first_webhook_event("ses", "m-1")
    assert store.first_webhook_event("mailgun", "m-1") and store.webhook_event_seen("ses", "m-1")
    assert not store.webhook_event_seen("ses", "m-2")
    assert store.suppress("a@example.com", "soft", "soft-bounce", until=time.time() + 60)
    assert store.suppress("a@example.com", "hard", "bounce")
    assert not store.suppress("a@example.com", "soft again", "soft-bounce", until=time.time() + 60)
    assert not store.suppress("a@example.com", "left", "unsubscribe")  # urgent mail must not reach it
    assert store.suppressed("a@example.com") == ("bounce", "hard")
    store.suppress("b@example.com", "lapsed", "soft-bounce", until=time.time() - 1)
    assert store.suppressed("b@example.com") is None and store.suppressed_many(["B@example.com", "a@example.com"]) == \
        {"a@example.com": ("bounce", "hard")}
    assert store.suppression_counts() == {"bounce": 1}
    assert [r[0] for r in store.suppression_search("example")] == ["a@example.com"]
    for key in ("k1", "k2"):
        for _ in range(3):  # a message reported three times counts once
            store.record_bounce(source="webhook:mailgun", kind="webhook", classification="soft", address="c@example.com",
                                key=key)
    assert store.soft_bounces("c@example.com", since=0) == 2
    store.close()


# What each provider's reasons mean, beyond its published samples: (provider, the event, what it
# is handled as, the suppression it leaves). The event names zoe@example.com, a message of ours.
REASONS = [
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "suppress-unsubscribe"}, "unsubscribe", "unsubscribe"),
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "suppress-complaint"}, "complaint", "complaint"),
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}, "hard", "bounce"),
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "old"}, "soft", None),
    # Mailgun's last try of a message it gave up on can say temporary: "old" ends it all the same
    ("mailgun", {"event": "failed", "severity": "temporary", "reason": "old"}, "soft", None),
    ("mailgun", {"event": "failed", "severity": "temporary", "reason": "generic"}, "delayed", None),
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "generic",
                 "delivery-status": {"enhanced-code": "5.1.1"}}, "hard", "bounce"),
    ("mailgun", {"event": "failed", "severity": "permanent", "reason": "generic",
                 "delivery-status": {"enhanced-code": "5.7.1"}}, "refused", None),  # policy: the address is fine
    ("sendgrid", {"event": "dropped", "reason": "Unsubscribed Address"}, "unsubscribe", "unsubscribe"),
    ("sendgrid", {"event": "dropped", "reason": "Spam Reporting Address"}, "complaint", "complaint"),
    ("sendgrid", {"event": "dropped", "reason": "Invalid"}, "hard", "bounce"),
    ("sendgrid", {"event": "dropped", "reason": "Spam Content (if spam checker app enabled)"}, "ignored", None),
    ("postmark", {"RecordType": "Bounce", "Type": "Unsubscribe", "TypeCode": 16}, "unsubscribe", "unsubscribe"),
    ("postmark", {"RecordType": "Bounce", "Type": "Transient", "TypeCode": 2}, "soft", None),
    ("postmark", {"RecordType": "Bounce", "Type": "AutoResponder", "TypeCode": 64}, "ignored", None),
    ("postmark", {"RecordType": "SubscriptionChange", "SuppressSending": True, "SuppressionReason": "ManualSuppression",
                  "Origin": "Recipient"}, "unsubscribe", "unsubscribe"),
    ("postmark", {"RecordType": "SubscriptionChange", "SuppressSending": True, "SuppressionReason": "SpamComplaint"},
     "complaint", "complaint"),
    ("postmark", {"RecordType": "SubscriptionChange", "SuppressSending": False, "Origin": "Customer"}, "ignored", None),
    ("ses", {"notificationType": "Bounce", "bounce": {"bounceType": "Undetermined", "bouncedRecipients": [{}]}},
     "soft", None),
    ("ses", {"notificationType": "Complaint", "complaint": {"complaintFeedbackType": "not-spam",
                                                           "complainedRecipients": [{}]}}, "ignored", None),
]


@pytest.mark.parametrize("provider,event,handled,suppressed", REASONS,
                         ids=[f"{p}-{e.get('reason') or e.get('Type') or e.get('SuppressionReason') or e.get('RecordType') or e.get('notificationType')}-{h}"
                              for p, e, h, _ in REASONS])
def test_each_providers_reasons_are_read_as_meant(hooks: Hooks, provider: str, event: dict[str, Any], handled: str,
                                                  suppressed: str | None) -> None:
    token = hooks.message("reason:1", "zoe@example.com")
    now = str(int(time.time()))
    event = json.loads(json.dumps(event))
    if provider == "mailgun":
        event.update({"recipient": "zoe@example.com", "id": "r-1", "user-variables": {"beanmail": token}})
        body, headers = hooks.signers.mailgun({"signature": {"timestamp": now, "token": "d" * 50, "signature": ""},
                                               "event-data": event}, now), {}
    elif provider == "sendgrid":
        body, headers = hooks.signers.sendgrid([{**event, "email": "zoe@example.com", "beanmail": token}], now)
    elif provider == "postmark":
        event.update({"Email": "zoe@example.com", "Recipient": "zoe@example.com", "Metadata": {"beanmail": token}})
        body, headers = json.dumps(event).encode(), POSTMARK_AUTH
    else:
        inner = event.get("bounce") or event.get("complaint")
        for r in inner.get("bouncedRecipients", inner.get("complainedRecipients", [])):
            r["emailAddress"] = "zoe@example.com"
        event["mail"] = {"source": verp.return_path(RETURN_PATH, token), "destination": ["zoe@example.com"]}
        body, headers = hooks.signers.sns(event), {}
    assert post(f"{hooks.url}/{provider}", body, headers) == (200, {"handled": [handled]})
    assert (hooks.store.suppressed("zoe@example.com") or (None,))[0] == suppressed
