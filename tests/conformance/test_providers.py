"""Each provider's published webhook samples (``providers/*.json``, the page each came from
noted beside it) through the webhook app over real HTTP: signed as the provider signs, each
posted to a store of its own in which the sample's message is one beanmail sent (its token put
where the provider hands it back), and what it did (the answer, the suppression list) compared
with what the provider means by it. Prints one line: ``N of M samples handled as meant``."""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any, Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from worker.feedback import verp
from worker.feedback.webhooks import WebhookApp
from worker.settings import Settings
from worker.store import Store

from ..webhook_signers import Signers, post

SAMPLES = Path(__file__).parent / "providers"
RETURN_PATH = "bounces@returns.beanmail.example"
SECRET = "verp-secret-for-conformance"
POSTMARK_AUTH = {"Authorization": "Basic " + base64.b64encode(b"postmark:pm-pass").decode()}
ENDPOINT = {"ses": "ses", "sns": "ses", "sendgrid": "sendgrid", "postmark": "postmark", "mailgun": "mailgun"}


class Stand:
    """One loopback HTTP server; each sample gets a webhook app (and a store) of its own."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None
        self.server = make_server("127.0.0.1", 0, lambda environ, start: self.app(environ, start),  # type: ignore[misc]
                                  handler_class=type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None}))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand() -> Iterator[Stand]:
    s = Stand()
    yield s
    s.close()


def samples(folder: Path = SAMPLES) -> list[tuple[str, dict[str, Any]]]:
    """(provider, sample) of every file in ``folder``."""
    out = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        out += [(data["provider"], sample) for sample in data["samples"]]
    return out


def test_each_providers_published_samples_are_handled_as_the_provider_means(
        tmp_path: Path, stand: Stand, capsys: pytest.CaptureFixture[str]) -> None:
    signers = Signers()
    base = Settings().replace(
        return_path=RETURN_PATH, return_path_secret=SECRET,
        ses_topic_arns=f"{signers.topic},arn:aws:sns:us-west-2:123456789012:MyTopic",
        sendgrid_webhook_key=signers.sendgrid_public, postmark_webhook_password="pm-pass",
        mailgun_signing_key=signers.mailgun_key)
    results: list[tuple[str, str, str]] = []
    for n, (provider, sample) in enumerate(samples()):
        store = Store(str(tmp_path / f"sample-{n}.sqlite3"))
        stand.app = WebhookApp(base.replace(store=store.location), store, certificates=lambda url: signers.sns_cert)
        body, headers = _as_sent(provider, copy.deepcopy(sample["payload"]), f"sample:{n}", store, signers)
        status, answer = post(f"{stand.url}/{ENDPOINT[provider]}", body, headers)
        expect = sample["expect"]
        got = {a: (store.suppressed(a) or (None,))[0] for a in expect["suppressed"]}
        wrong = []
        if status != 200 or answer.get("handled") != expect["handled"]:
            wrong.append(f"answered {status} {answer}, meant 200 {{'handled': {expect['handled']}}}")
        if got != expect["suppressed"]:
            wrong.append(f"suppressed {got}, meant {expect['suppressed']}")
        results.append((provider, sample["name"], "; ".join(wrong)))
        store.close()
    as_meant = sum(1 for *_, wrong in results if not wrong)
    with capsys.disabled():
        print(f"\n{as_meant} of {len(results)} samples handled as meant")
    assert as_meant == len(results), "\n".join(f"{p} {name}: {wrong}" for p, name, wrong in results if wrong)
    assert {p for p, *_ in results} == {"ses", "sns", "sendgrid", "postmark", "mailgun"}


def _delivery(store: Store, key: str, recipients: list[str]) -> str:
    """The message beanmail sent (as Outbound.prepare records it) and its VERP token."""
    joined = ",".join(r.lower() for r in recipients)
    store.remember_message(verp.token_id(key, joined), key, joined, "welcome", False)
    store.claim(key, recipients[0], "welcome", lease=30)
    store.finish(key, recipients[0], "welcome", "sent")
    return verp.make_token(key, joined, SECRET)


def _as_sent(provider: str, payload: Any, key: str, store: Store, signers: Signers) -> tuple[bytes, dict[str, str]]:
    """The sample as the provider would post it about a message of ours."""
    if provider == "sns":
        return signers.sns_envelope(payload), {}
    if provider == "ses":
        mail = payload["mail"]
        token = _delivery(store, key, mail["destination"])
        name, _ = parseaddr(mail["source"])
        ours = verp.return_path(RETURN_PATH, token)
        mail["source"] = formataddr((name, ours)) if name else ours
        return signers.sns(payload), {}
    if provider == "sendgrid":
        tokens = {}
        for event in payload:
            address = event["email"].lower()
            if address not in tokens:
                tokens[address] = _delivery(store, f"{key}:{len(tokens)}", [address])
            event["beanmail"] = tokens[address]
        return signers.sendgrid(payload, str(int(_now())))
    if provider == "postmark":
        address = payload.get("Email") or payload.get("Recipient")
        payload["Metadata"] = {**(payload.get("Metadata") or {}), "beanmail": _delivery(store, key, [address])}
        return json.dumps(payload).encode(), POSTMARK_AUTH
    if provider == "mailgun":
        payload["user-variables"] = {**payload.get("user-variables", {}),
                                     "beanmail": _delivery(store, key, [payload["recipient"]])}
        wrapped = {"signature": {"timestamp": "", "token": os.urandom(25).hex(), "signature": ""}, "event-data": payload}
        return signers.mailgun(wrapped, str(int(_now()))), {}
    raise AssertionError(f"no provider {provider}")


def _now() -> float:
    import time

    return time.time()
