"""Delivery events out (docs/events.md): queued on a real beanstalkd, POSTed by the events runner
to a real local HTTP endpoint, signed as Standard Webhooks say (checked with the
``standardwebhooks`` package), retried while the endpoint is down, buried with a reason when it
refuses, spooled when beanstalkd is away; and received in Python (``producer.events.verify``,
the Django view and signals)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from producer.events import EventVerificationError, verify
from worker import ops
from worker.events.deliver import Endpoint as Signer
from worker.events.deliver import Runner
from worker.events.emit import Emitter
from worker.events.model import BOUNCED, SENT, Event, Queued, event_id
from worker.settings import Settings, SettingsError, validate

from .conftest import bare_env, beanmail
from .endpoint import Endpoint
from .servers import Beanstalkd, free_port, wait_until

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


def sent(n: int, **extra: Any) -> Event:
    return Event(SENT, f"comment:{n}", f"user{n}@example.com", "comment", {"issue": {"id": n}},
                 {"reply": "250 2.0.0 Ok: queued"}, **extra)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint().start()
    yield e
    e.stop()


@pytest.fixture
def events_settings(beanstalkd: Beanstalkd, endpoint: Endpoint, tmp_path: Path) -> Settings:
    return Settings(beanstalk_url=beanstalkd.url, store=str(tmp_path / "store.sqlite3"), events_url=endpoint.url,
                    events_secret=SECRET, events_backoff_base=1, events_backoff_max=2, events_connections=2,
                    events_spool=str(tmp_path / "events.spool"), reserve_timeout=1)


class Running:
    """``beanmail events run`` in this process, stopped (as SIGTERM would) when the block ends."""

    def __init__(self, settings: Settings) -> None:
        self.runner = Runner(settings)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self) -> Runner:
        self.thread.start()
        return self.runner

    def __exit__(self, *exc: object) -> None:
        self.runner.stopping = True
        self.thread.join(15)
        assert not self.thread.is_alive()
        self.runner.close()


# -- the event itself ---------------------------------------------------------------------------

def test_an_event_id_names_what_happened_not_when_so_a_second_emission_has_the_same_id() -> None:
    first, again = sent(1), sent(1, at=time.time() + 60)
    assert first.id == again.id and first.id.startswith("evt_")
    assert sent(2).id != first.id
    assert Event(BOUNCED, "comment:1", "user1@example.com", discriminator="hard").id != first.id
    assert event_id(SENT, "k", "Zoe@Example.com") == event_id(SENT, "k", "zoe@example.com")
    payload = json.loads(Queued.from_job(first.job()).body)
    assert payload["type"] == "message.sent" and payload["timestamp"].endswith("Z")
    assert payload["data"] == {"key": "comment:1", "recipient": "user1@example.com", "template": "comment",
                               "entities": {"issue": {"id": 1}}, "reply": "250 2.0.0 Ok: queued"}


def test_a_long_reply_text_is_cut_so_the_event_fits_a_beanstalkd_job() -> None:
    big = Event("message.replied", "k", "a@example.com", details={"text": "é" * 50_000, "html": "<p>" + "x" * 50_000})
    body = big.job()
    assert len(body) <= 60_000
    data = json.loads(Queued.from_job(body).body)["data"]
    assert data["truncated"] is True and data["text"].startswith("éé")


def test_the_worker_signature_verifies_with_standardwebhooks_and_producer_events_verify() -> None:
    body = Queued.from_job(sent(7).job()).body
    now = int(time.time())
    signer = Signer(Settings(events_url="http://127.0.0.1:9/hook", events_secret=f"{SECRET},{OTHER}"))
    headers = {"webhook-id": sent(7).id, "webhook-timestamp": str(now),
               "webhook-signature": signer.signature(sent(7).id, now, body)}
    assert Webhook(SECRET).verify(body, headers)["data"]["key"] == "comment:7"
    assert Webhook(OTHER).verify(body, headers)["type"] == "message.sent"  # a rotation: either secret verifies
    event = verify(body, headers, SECRET)
    assert (event.id, event.type, event.data["entities"]) == (sent(7).id, "message.sent", {"issue": {"id": 7}})
    assert verify(body, {"HTTP_WEBHOOK_ID": headers["webhook-id"],  # a WSGI environ works as well
                         "HTTP_WEBHOOK_TIMESTAMP": headers["webhook-timestamp"],
                         "HTTP_WEBHOOK_SIGNATURE": headers["webhook-signature"]}, OTHER).id == event.id


def test_producer_events_verify_accepts_what_standardwebhooks_signs_and_refuses_forgeries() -> None:
    body = b'{"data":{"key":"k","recipient":"a@example.com"},"timestamp":"2026-01-01T00:00:00.000Z","type":"message.bounced"}'
    now = datetime.now(tz=timezone.utc)
    headers = {"Webhook-Id": "evt_1", "Webhook-Timestamp": str(int(now.timestamp())),
               "Webhook-Signature": Webhook(SECRET).sign("evt_1", now, body)}
    assert verify(body, headers, SECRET).type == "message.bounced"
    assert verify(body, headers, [OTHER, SECRET]).id == "evt_1"
    refusals = {
        "changed body": (body.replace(b"a@", b"b@"), headers, SECRET),
        "wrong secret": (body, headers, OTHER),
        "other id": (body, {**headers, "Webhook-Id": "evt_2"}, SECRET),
        "no signature": (body, {k: v for k, v in headers.items() if k != "Webhook-Signature"}, SECRET),
    }
    for what, (b, h, s) in refusals.items():
        with pytest.raises(EventVerificationError):
            verify(b, h, s)
        with pytest.raises(WebhookVerificationError):  # the reference implementation agrees
            Webhook(s if isinstance(s, str) else s[0]).verify(b, h)
    with pytest.raises(EventVerificationError, match="too far"):
        verify(body, headers, SECRET, now=now.timestamp() + 600)  # a replay ten minutes later


def test_events_settings_are_checked_at_start() -> None:
    ok = Settings(events_url="https://app.example/hooks", events_secret=SECRET, events_types="message.bounced")
    assert validate(ok) is ok
    for bad, match in [({"events_secret": ""}, "EVENTS_SECRET: needed"),
                       ({"events_secret": "abc"}, "whsec_"),
                       ({"events_secret": "whsec_!!"}, "base64"),
                       ({"events_url": "ftp://x"}, "EVENTS_URL"),
                       ({"events_types": "message.sent,message.opened"}, "message.opened"),
                       ({"reply_domain": "replies.example.org"}, "REPLY_SECRET")]:
        with pytest.raises(SettingsError, match=match):
            validate(Settings(**{**{"events_url": ok.events_url, "events_secret": SECRET}, **bad}))


# -- delivered over HTTP from a real beanstalkd ---------------------------------------------------

def test_events_reach_an_endpoint_that_answers_503_for_a_while_each_once_and_signed(
        events_settings: Settings, endpoint: Endpoint) -> None:
    endpoint.answer = lambda n: 503 if n < 45 else 200  # down for the first 45 requests
    Emitter(events_settings).emit_many([sent(n) for n in range(30)])
    with Running(events_settings) as runner:
        wait_until(lambda: len(endpoint.delivered()) >= 30, 30, "every event delivered")
    delivered = endpoint.delivered()
    assert sorted(r.id for r in delivered) == sorted(sent(n).id for n in range(30))  # each once
    assert runner.retried >= 30 and sum(1 for r in endpoint.received if r.status == 503) == 45
    for r in delivered:
        event = Webhook(SECRET).verify(r.body, r.headers)
        assert event["data"]["key"].startswith("comment:") and r.headers["webhook-id"] == r.id
    assert endpoint.connections <= 2 + 2  # kept alive (a reconnect after each refusal burst at most)


def test_an_endpoint_answering_404_buries_the_event_at_once_with_its_reason(
        events_settings: Settings, endpoint: Endpoint) -> None:
    endpoint.answer = lambda n: 404
    Emitter(events_settings).emit(sent(1))
    runner = Runner(events_settings)
    assert runner.run(burst=True) == 0
    runner.close()
    assert len(endpoint.received) == 1 and runner.buried == 1
    [job] = ops.buried(events_settings)
    assert job["tube"] == "events" and job["outcome"] == "refused"
    assert "HTTP 404 Not Found: no such hook" in job["reason"] and sent(1).id in job["reason"]
    shown = beanmail("buried", env=bare_env(events_settings)).stdout  # what the operator sees
    assert "events" in shown and "refused" in shown and "HTTP 404 Not Found: no such hook" in shown


@pytest.mark.parametrize("status", [429, 500, 408])
def test_an_endpoint_that_never_takes_it_gets_it_until_the_max_age_then_it_is_buried(
        events_settings: Settings, endpoint: Endpoint, status: int) -> None:
    endpoint.answer = lambda n: status
    s = events_settings.replace(events_max_age=2)
    Emitter(s).emit(sent(1))
    with Running(s):
        found = wait_until(lambda: ops.buried(s), 20, "the event buried")
    assert len(endpoint.received) >= 2  # retried, not buried at the first refusal
    [job] = found  # type: ignore[misc]
    assert job["outcome"] == "exhausted" and f"last: HTTP {status}" in job["reason"]


def test_events_emitted_while_beanstalkd_is_down_are_spooled_then_delivered(
        events_settings: Settings, endpoint: Endpoint, beanstalkd: Beanstalkd) -> None:
    down = events_settings.replace(beanstalk_url=f"beanstalk://127.0.0.1:{free_port()}")
    Emitter(down).emit_many([sent(1), sent(2)])  # no exception: a delivery never fails for its event
    assert Path(events_settings.events_spool).read_bytes().count(b"\n") == 2
    runner = Runner(events_settings)
    assert runner.run(burst=True) == 0
    runner.close()
    assert sorted(r.id for r in endpoint.delivered()) == sorted([sent(1).id, sent(2).id])


def test_only_the_chosen_types_are_queued(events_settings: Settings, endpoint: Endpoint) -> None:
    s = events_settings.replace(events_types="message.bounced")
    Emitter(s).emit_many([sent(1), Event(BOUNCED, "comment:1", "user1@example.com", discriminator="hard")])
    runner = Runner(s)
    assert runner.run(burst=True) == 0
    runner.close()
    assert [json.loads(r.body)["type"] for r in endpoint.delivered()] == ["message.bounced"]


def test_beanmail_events_run_burst_delivers_as_supervisord_would_run_it(
        events_settings: Settings, endpoint: Endpoint) -> None:
    Emitter(events_settings).emit_many([sent(n) for n in range(5)])
    env = bare_env(events_settings, BEANMAIL_EVENTS_URL=endpoint.url, BEANMAIL_EVENTS_SECRET=SECRET,
                   BEANMAIL_EVENTS_SPOOL=events_settings.events_spool)
    beanmail("events", "run", "--burst", env=env)
    assert len({r.id for r in endpoint.delivered()}) == 5
    env.pop("BEANMAIL_EVENTS_URL")
    refused = beanmail("events", "run", "--burst", env=env, check=False)
    assert refused.returncode == 78 and "BEANMAIL_EVENTS_URL" in refused.stdout + refused.stderr


def test_an_endpoint_that_is_down_gets_every_event_once_it_is_back(events_settings: Settings) -> None:
    port = free_port()
    s = events_settings.replace(events_url=f"http://127.0.0.1:{port}/hooks")
    Emitter(s).emit_many([sent(n) for n in range(20)])
    with Running(s) as runner:
        wait_until(lambda: runner.retried >= 20, 20, "every event tried and put back")
        assert runner.buried == 0
        back = Endpoint(port=port).start()  # the application's server comes back on its port
        try:
            wait_until(lambda: len(back.delivered()) >= 20, 30, "every event delivered")
        finally:
            back.stop()
    assert sorted(r.id for r in back.delivered()) == sorted(sent(n).id for n in range(20))


# -- received in PHP and Ruby (the snippets of docs/events.md) -------------------------------------

@pytest.mark.parametrize("command", [["php", "examples/php/verify_event.php"], ["ruby", "examples/ruby/verify_event.rb"]])
def test_the_php_and_ruby_snippets_of_docs_events_md_verify_a_signed_event_and_refuse_a_forged_one(
        command: list[str]) -> None:
    import subprocess

    from .conftest import ROOT

    event = Event(BOUNCED, "k:1", "zoë@example.com", "welcome", details={"status": "5.1.1"}, discriminator="hard")
    body = Queued.from_job(event.job()).body  # UTF-8, as sent
    now = int(time.time())
    signer = Signer(Settings(events_url="http://127.0.0.1:9/hook", events_secret=SECRET))
    headers = {"Webhook-Id": event.id, "Webhook-Timestamp": str(now),
               "Webhook-Signature": signer.signature(event.id, now, body)}
    run = [*command[:1], str(ROOT / command[1]), json.dumps(headers)]
    ok = subprocess.run([*run, SECRET], input=body, capture_output=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.decode().strip() == "message.bounced zoë@example.com", ok.stderr
    forged = subprocess.run([*run, SECRET], input=body.replace(b"5.1.1", b"2.0.0"), capture_output=True, timeout=30)
    assert forged.returncode == 1 and b"no signature matches" in forged.stderr
    wrong = subprocess.run([*run, OTHER], input=body, capture_output=True, timeout=30)
    assert wrong.returncode == 1


# -- received in Django ---------------------------------------------------------------------------

def test_the_django_view_sends_the_signal_and_refuses_a_forgery() -> None:
    import django
    from django.conf import settings as dj

    if not dj.configured:  # the project tests/test_webapps.py and test_hooks.py configure, whichever runs first
        dj.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
                     EMAIL_BACKEND="producer.django.EmailBackend", DEFAULT_FROM_EMAIL="app@beanmail.example",
                     INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.test import RequestFactory

    from producer.django import signals as django_events

    saved = getattr(dj, "BEANMAIL", None)
    dj.BEANMAIL = {**(saved or {}), "EVENTS_SECRET": SECRET}
    got: list[Any] = []

    def on_bounce(sender: Any, event: Any, **kwargs: Any) -> None:
        got.append(event)
    django_events.message_bounced.connect(on_bounce)
    try:
        bounce = Event(BOUNCED, "comment:9", "zoe@example.com", "comment", {"issue": {"id": 9}},
                       {"bounce": "hard", "status": "5.1.1", "reason": "user unknown"}, discriminator="hard")
        body = Queued.from_job(bounce.job()).body
        now = datetime.now(tz=timezone.utc)
        headers = {"HTTP_WEBHOOK_ID": bounce.id, "HTTP_WEBHOOK_TIMESTAMP": str(int(now.timestamp())),
                   "HTTP_WEBHOOK_SIGNATURE": Webhook(SECRET).sign(bounce.id, now, body)}
        factory = RequestFactory()
        ok = django_events.events_view(factory.post("/beanmail/events", body, content_type="application/json", **headers))
        assert ok.status_code == 200 and [e.id for e in got] == [bounce.id]
        assert got[0].data["status"] == "5.1.1" and got[0].data["entities"] == {"issue": {"id": 9}}
        forged = django_events.events_view(factory.post("/beanmail/events", body.replace(b"zoe", b"eve"),
                                                        content_type="application/json", **headers))
        assert forged.status_code == 401 and len(got) == 1

        def broken(sender: Any, event: Any, **kwargs: Any) -> None:
            raise RuntimeError("database down")
        django_events.message_bounced.connect(broken)
        with pytest.raises(RuntimeError):  # Django turns it into a 500: beanmail delivers it again later
            django_events.events_view(factory.post("/beanmail/events", body, content_type="application/json", **headers))
        django_events.message_bounced.disconnect(broken)
    finally:
        django_events.message_bounced.disconnect(on_bounce)
        dj.BEANMAIL = saved if saved is not None else {}


# -- the emission points: the pipeline, the loop's burials, the feedback intake, unsubscribes ------

def issue_by_id(entity_id: Any) -> dict[str, Any]:
    """The entity resolver of the emission tests (``[beanmail.entities.issue]``)."""
    return {"id": entity_id, "title": f"Issue {entity_id}"}


def payloads(endpoint: Endpoint) -> dict[tuple[str, str], dict[str, Any]]:
    """Delivered events by (type, recipient)."""
    out = {}
    for r in endpoint.delivered():
        p = json.loads(r.body)
        out[(p["type"], p["data"]["recipient"])] = p["data"]
    return out


@pytest.fixture
def emitting_settings(settings: Settings, endpoint: Endpoint, tmp_path: Path) -> Settings:
    return settings.replace(events_url=endpoint.url, events_secret=SECRET, events_spool=str(tmp_path / "events.spool"),
                            entities={"issue": {"callable": "tests.test_events:issue_by_id"}})


def test_a_worker_run_emits_sent_bounced_and_failed_with_key_recipient_template_and_entities(
        emitting_settings: Settings, endpoint: Endpoint, smtp: Any) -> None:
    from producer import Notifier

    from .conftest import run_burst

    issue = {"issue": {"type": "issue", "id": 42}}
    n = Notifier(emitting_settings.beanstalk_url)
    n.notify("welcome", "zoe@example.com", {"name": "Zoë"}, entities=issue, key="welcome:zoe")
    n.notify("welcome", "reject@example.com", {"name": "R"}, entities=issue, key="welcome:reject")
    n.notify("no_such_template", "ann@example.com", {}, entities=issue, key="broken:ann")
    n.close()
    run_burst(emitting_settings)
    runner = Runner(emitting_settings)
    assert runner.run(burst=True) == 0
    runner.close()
    got = payloads(endpoint)
    assert set(got) == {("message.sent", "zoe@example.com"), ("message.bounced", "reject@example.com"),
                        ("message.failed", "ann@example.com")}
    sent_ = got[("message.sent", "zoe@example.com")]
    assert (sent_["key"], sent_["template"], sent_["entities"]) == ("welcome:zoe", "welcome", issue)
    assert sent_["reply"].startswith("250")
    bounced = got[("message.bounced", "reject@example.com")]
    assert (bounced["bounce"], bounced["status"], bounced["source"]) == ("hard", "5.1.1", "smtp")
    failed = got[("message.failed", "ann@example.com")]
    assert failed["outcome"] == "poison" and "unknown template 'no_such_template'" in failed["reason"]
    assert failed["key"] == "broken:ann" and failed["entities"] == issue


def test_bounces_and_complaints_after_the_send_emit_events_naming_the_sent_message(
        emitting_settings: Settings, endpoint: Endpoint) -> None:
    from worker.feedback.intake import Intake, Match
    from worker.feedback.parse import Failure, Report
    from worker.store import Store

    store = Store(emitting_settings.store)
    store.remember_refs([("digest:1", "digest", json.dumps({"issue": {"type": "issue", "id": 7}}))])
    intake = Intake(emitting_settings, store)
    intake.apply(Report("dsn", [Failure("zoe@example.com", "failed", "5.2.2", "mailbox full")]),
                 Match("t1", "digest:1", "zoe@example.com", True), "", source="pipe", raw="(a DSN)")
    intake.apply(Report("arf", feedback_type="abuse"), Match("t2", "digest:1", "ann@example.com", True), "",
                 source="webhook:ses", raw="(an ARF report)")
    store.close()
    runner = Runner(emitting_settings)
    assert runner.run(burst=True) == 0
    runner.close()
    got = payloads(endpoint)
    bounced, complained = got[("message.bounced", "zoe@example.com")], got[("message.complained", "ann@example.com")]
    assert (bounced["key"], bounced["template"], bounced["entities"]) == ("digest:1", "digest", {"issue": {"type": "issue", "id": 7}})
    assert (bounced["bounce"], bounced["status"], bounced["source"]) == ("soft", "5.2.2", "pipe")
    assert (complained["feedback_type"], complained["source"], complained["suppressed"]) == ("abuse", "webhook:ses", True)


def test_an_unsubscribe_recorded_through_emitting_queues_message_unsubscribed(
        events_settings: Settings, endpoint: Endpoint, tmp_path: Path) -> None:
    from producer.events import emitting
    from producer.unsubscribe import UnsubscribeApp, make_token

    recorded: list[tuple[str, str]] = []
    app = UnsubscribeApp("s3cret", emitting(lambda a, l: recorded.append((a, l)), events_settings.beanstalk_url))
    token = make_token("Zoe@Example.com", "s3cret", list_id="<news.example.org>")
    body = f"token={token}".encode()
    import io
    status: list[str] = []
    app({"REQUEST_METHOD": "POST", "QUERY_STRING": "", "CONTENT_LENGTH": str(len(body)),
         "wsgi.input": io.BytesIO(body)}, lambda s, h: status.append(s))
    assert status == ["200 OK"] and recorded == [("zoe@example.com", "<news.example.org>")]
    runner = Runner(events_settings)
    assert runner.run(burst=True) == 0
    runner.close()
    [r] = endpoint.delivered()
    assert verify(r.body, r.headers, SECRET).data == {"key": "", "recipient": "zoe@example.com", "template": "",
                                                      "entities": {}, "list_id": "<news.example.org>"}
    down = emitting(lambda a, l: None, f"beanstalk://127.0.0.1:{free_port()}", spool=str(tmp_path / "spool"))
    down("ann@example.com", "")  # beanstalkd away: spooled, not raised into the request
    from producer import Notifier, spool

    assert spool.flush(str(tmp_path / "spool"), Notifier(events_settings.beanstalk_url, spool="", blobs="").put_body) == 1
    runner = Runner(events_settings)  # what `beanmail spool flush` moved on is delivered like any event
    assert runner.run(burst=True) == 0
    runner.close()
    assert ("message.unsubscribed", "ann@example.com") in payloads(endpoint)


@pytest.mark.parametrize("path,fence,start,end", [("examples/php/verify_event.php", "php", "function beanmail_verify_event", "\n}\n"),
                                                  ("examples/ruby/verify_event.rb", "ruby", "def beanmail_verify_event", "\nend\n")])
def test_the_php_and_ruby_functions_in_docs_events_md_are_the_tested_ones(path: str, fence: str, start: str,
                                                                             end: str) -> None:
    """docs/events.md shows the verifying function of each example file: the one the test above runs."""
    from .conftest import ROOT

    source = (ROOT / path).read_text()
    function = source[source.index(start):source.index(end, source.index(start)) + len(end)]
    docs = (ROOT / "docs" / "events.md").read_text()
    block = docs[docs.index(f"```{fence}\n"):]
    assert function in block[:block.index("```\n", 6)], f"docs/events.md's {fence} block differs from {path}"
