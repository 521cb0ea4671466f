"""Each provider's published inbound payload (``inbound/*.json``, the page each came from noted
beside it) posted over real HTTP to the inbound webhook app, signed as the provider signs, about
a reply address beanmail minted: each becomes one signed ``message.replied`` event with the
sample's text, delivered to a local endpoint; the same payload with a forged or expired address,
an auto-reply's headers or a loop's is refused and recorded, and one whose signature or password
is wrong is answered 403/401 and recorded nowhere."""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from worker.events import replies
from worker.events.deliver import Runner
from worker.events.inbound_webhooks import InboundWebhookApp
from worker.settings import Settings
from worker.store import Store

from ..endpoint import Endpoint
from ..test_replies import endpoint  # noqa: F401 - the fixture
from ..webhook_signers import Signers, post
from .test_providers import POSTMARK_AUTH, Stand, stand  # noqa: F401 - the fixture
from .test_providers import samples as provider_samples

SAMPLES = Path(__file__).parent / "inbound"


def samples() -> list[tuple[str, dict[str, Any]]]:
    return provider_samples(SAMPLES)
DOMAIN = "replies.example.org"
SECRET = "whsec_" + base64.b64encode(b"i" * 32).decode()


def _fill(value: Any, reply_to: str) -> Any:
    if isinstance(value, str):
        return value.replace("{reply_to}", reply_to)
    if isinstance(value, list):
        return [_fill(v, reply_to) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, reply_to) for k, v in value.items()}
    return value


def _with_header(provider: str, payload: dict[str, Any], name: str, value: str) -> None:
    """A header added to the message the payload carries, where that provider puts headers."""
    if provider == "postmark":
        payload["Headers"].append({"Name": name, "Value": value})
    elif provider == "mailgun" and "body-mime" in payload:
        payload["body-mime"] = f"{name}: {value}\r\n" + payload["body-mime"]
    elif provider == "mailgun":
        payload["message-headers"] = json.dumps(json.loads(payload["message-headers"]) + [[name, value]])
    elif provider == "sendgrid":
        field = "email" if "email" in payload else "headers"
        payload[field] = f"{name}: {value}\r\n" + payload[field]
    else:
        payload["content"] = f"{name}: {value}\r\n" + payload["content"]


def _form_data(fields: dict[str, str], files: dict[str, bytes] | None = None) -> tuple[bytes, str]:
    boundary = "xYzZY" + uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.bin"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode() + v + b"\r\n" for k, v in (files or {}).items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _as_sent(provider: str, payload: dict[str, Any], signers: Signers) -> tuple[bytes, dict[str, str]]:
    if provider == "ses":  # each notification its own SNS MessageId, as SNS gives
        return signers.sns(payload, message_id=str(uuid.uuid4())), {}
    if provider == "postmark":
        return json.dumps({**payload, "MessageID": str(uuid.uuid4())}).encode(), POSTMARK_AUTH
    if provider == "mailgun":
        token, stamp = os.urandom(25).hex(), str(int(time.time()))
        signed = json.loads(signers.mailgun({"signature": {"timestamp": stamp, "token": token, "signature": ""}}, stamp))
        fields = {**payload, **signed["signature"]}
        return urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    body, content_type = _form_data(payload)
    return body, {"Content-Type": content_type, **signers.sendgrid_headers(body, str(int(time.time())))}


def test_each_providers_inbound_sample_becomes_one_message_replied_or_is_refused_and_recorded(
        tmp_path: Path, stand: Stand, endpoint: Endpoint, beanstalkd: Any, capsys: pytest.CaptureFixture[str]) -> None:
    signers = Signers()
    store = Store(str(tmp_path / "store.sqlite3"))
    settings = Settings(beanstalk_url=beanstalkd.url, store=store.location, reply_domain=DOMAIN, reply_secret="r3ply",
                        from_addr="Acme <noreply@acme.example>", events_url=endpoint.url, events_secret=SECRET,
                        events_spool=str(tmp_path / "events.spool"), reserve_timeout=1,
                        ses_topic_arns=signers.topic, sendgrid_inbound_key=signers.sendgrid_public,
                        postmark_webhook_password="pm-pass", mailgun_signing_key=signers.mailgun_key)
    stand.app = InboundWebhookApp(settings, store, certificates=lambda url: signers.sns_cert)
    checked = 0
    for n, (provider, sample) in enumerate(samples()):
        key = f"comment:{n}"
        store.remember_reply(replies.token_id(key, sample["sender"]), key, sample["sender"], "comment",
                             json.dumps({"issue": {"type": "issue", "id": n}}))
        good = replies.address(replies.make_token(key, sample["sender"], "r3ply", 86400), DOMAIN)
        stale = replies.address(replies.make_token(key, sample["sender"], "r3ply", 86400, now=time.time() - 3 * 86400),
                                DOMAIN)
        forged = replies.address(replies.make_token(key, sample["sender"], "guessed", 86400), DOMAIN)
        url = f"{stand.url}/{sample.get('path', provider)}"

        def send(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            body, headers = _as_sent(provider, payload, signers)
            return post(url, body, headers)
        genuine = _fill(copy.deepcopy(sample["payload"]), good)
        body, headers = _as_sent(provider, genuine, signers)
        assert post(url, body, headers) == (200, {"handled": ["replied"]}), (provider, sample["name"])
        again = post(url, body, headers)  # the provider sends it again (our 200 lost): passed on once
        assert again in ((200, {"handled": ["replay"]}), (200, {"handled": ["duplicate"]})), (provider, again)
        refusals = {"forged": _fill(copy.deepcopy(sample["payload"]), forged),
                    "expired": _fill(copy.deepcopy(sample["payload"]), stale)}
        for name, header in (("auto-reply", ("Auto-Submitted", "auto-replied")), ("loop", ("X-Loop", DOMAIN)),
                             ("unreadable", ("Cc", 'x:y;z@w, "\\x" <'))):  # Python's email package raises on it
            refusals[name] = _fill(copy.deepcopy(sample["payload"]), good)
            _with_header(provider, refusals[name], *header)
        before = len(store.inbound(limit=1000))
        for name, payload in refusals.items():
            assert send(payload) == (200, {"handled": ["refused"]}), (provider, sample["name"], name)
        rows = store.inbound(limit=1000)
        assert len(rows) == before + len(refusals) and {r["outcome"] for r in rows[:len(refusals)]} == {"refused"}
        # Mailgun signs its timestamp and token, not the body: a wrong signature there; the others sign the body
        tampered = body.replace(b"&signature=", b"&signature=0") if provider == "mailgun" else body.replace(b"a", b"b", 1)
        if provider == "postmark":
            headers = {"Authorization": "Basic " + base64.b64encode(b"postmark:guess").decode()}
        status, _ = post(url, tampered, headers)
        assert status in (401, 403) and len(store.inbound(limit=1000)) == len(rows), (provider, status)
        runner = Runner(settings)
        assert runner.run(burst=True) == 0
        runner.close()
        replied = [json.loads(r.body) for r in endpoint.delivered()]
        assert len(replied) == checked + 1, [e["data"]["key"] for e in replied]
        data = replied[-1]["data"]
        expect = sample["expect"]
        assert (data["key"], data["text"], data["sender_verified"]) == (key, expect["text"], True), (provider, data)
        assert data["authentication"] == expect["authentication"] and data["source"] == f"webhook:{provider}"
        assert data["html"].strip() == expect.get("html", data["html"].strip()) and data["entities"] == {"issue": {"type": "issue", "id": n}}
        checked += 1
    store.close()
    with capsys.disabled():
        print(f"\n{checked} of {len(samples())} inbound samples passed on as replies; each forged, expired,"
              " auto-replied, looping and unreadable copy refused and recorded")
    assert {p for p, _ in samples()} == {"ses", "postmark", "mailgun", "sendgrid"}


def test_what_is_no_providers_inbound_payload_is_answered_400_with_the_reason_and_never_500(
        tmp_path: Path, stand: Stand) -> None:
    signers = Signers()
    store = Store(str(tmp_path / "store.sqlite3"))
    settings = Settings(store=store.location, reply_domain=DOMAIN, reply_secret="r3ply",
                        ses_topic_arns=signers.topic, sendgrid_inbound_key=signers.sendgrid_public,
                        postmark_webhook_password="pm-pass", mailgun_signing_key=signers.mailgun_key)
    stand.app = InboundWebhookApp(settings, store, certificates=lambda url: signers.sns_cert)
    stamp = str(int(time.time()))
    mailgun = json.loads(signers.mailgun({"signature": {"timestamp": stamp, "token": "t" * 50, "signature": ""}}, stamp))
    mailgun_form = {"Content-Type": "application/x-www-form-urlencoded"}

    def sendgrid(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        body, content_type = _form_data(fields)
        return body, {"Content-Type": content_type, **signers.sendgrid_headers(body, stamp)}
    hostile: dict[str, list[tuple[bytes, dict[str, str]]]] = {
        "postmark": [(b, POSTMARK_AUTH) for b in (b"[]", b"null", b"\xff\xfe", b'{"Headers": "x"}', b"{" * 5000,
                                                  b'{"FromFull": 3}')],
        "mailgun": [(urlencode(mailgun["signature"]).encode(), mailgun_form),
                    (urlencode({**mailgun["signature"], "message-headers": "{not json"}).encode(), mailgun_form),
                    (json.dumps(mailgun).encode(), {"Content-Type": "application/json"})],
        "sendgrid": [sendgrid({"to": "x"}), sendgrid({"envelope": "[1", "headers": "From: a@b"}),
                     (b"not a form", {"Content-Type": "text/plain", **signers.sendgrid_headers(b"not a form", stamp)})],
        "ses": [(signers.sns("not json", message_id="a"), {}),
                (signers.sns({"notificationType": "Bounce"}, message_id="b"), {}),
                (signers.sns({"notificationType": "Received", "receipt": {"action": {"type": "S3"}}}, message_id="c"), {}),
                (signers.sns({"notificationType": "Received", "content": "@@@",
                              "receipt": {"action": {"encoding": "BASE64"}}}, message_id="d"), {})],
    }
    for provider, requests in hostile.items():
        for body, headers in requests:
            status, answer = post(f"{stand.url}/{provider}", body, headers)
            assert status == 400 and answer["error"].startswith(f"not a {provider} payload: "), (provider, body[:60], answer)
    assert store.inbound() == []
    store.close()


def test_a_reply_with_a_large_attachment_is_taken_and_its_text_passed_on(tmp_path: Path, stand: Stand) -> None:
    """Mailgun posts a reply's attachments with it (multipart/form-data): 3 MiB is taken (the
    attachment is not kept), where the bounce webhooks stop at 1 MiB."""
    signers = Signers()
    store = Store(str(tmp_path / "store.sqlite3"))
    settings = Settings(store=store.location, reply_domain=DOMAIN, reply_secret="r3ply",
                        mailgun_signing_key=signers.mailgun_key)
    stand.app = InboundWebhookApp(settings, store)
    [(_, sample)] = [(p, s) for p, s in samples() if s["name"] == "forward() fully parsed"]
    store.remember_reply(replies.token_id("k:big", sample["sender"]), "k:big", sample["sender"], "comment", "{}")
    payload = _fill(copy.deepcopy(sample["payload"]), replies.address(replies.make_token("k:big", sample["sender"],
                                                                                           "r3ply", 86400), DOMAIN))
    stamp = str(int(time.time()))
    signed = json.loads(signers.mailgun({"signature": {"timestamp": stamp, "token": "b" * 50, "signature": ""}}, stamp))
    body, content_type = _form_data({**payload, **signed["signature"], "attachment-count": "1"},
                                    {"attachment-1": os.urandom(3 * 1024 * 1024)})
    assert post(f"{stand.url}/mailgun", body, {"Content-Type": content_type}) == (200, {"handled": ["replied"]})
    [row] = store.inbound()
    assert (row["outcome"], row["key"]) == ("replied", "k:big")
    store.close()
