"""One bad job harms no other: whatever a job carries (a NUL, a lone surrogate, odd types, an
overlong key) buries that job alone with its reason, the rest of its batch is delivered, and the
worker never exits for it. On SQLite and on a real PostgreSQL (``store_location``)."""

from __future__ import annotations

import json

import pytest

from producer import Notifier
from producer import envelope as env
from producer.client import connect
from worker.fanout import Fanout, recipient_key
from worker.loop import Worker
from worker.settings import Settings
from worker.store import KEY_LIMIT, Store

from .conftest import run_burst
from .servers import SmtpServer

GOOD = 10


def _body(key: str, **fields: object) -> bytes:
    """A job body as the producer writes it, with ``fields`` put in as they are (no checks)."""
    obj = json.loads(env.encode(env.Envelope(kind="mail", id=key, to=(env.Recipient("bad@example.com"),),
                                             template="welcome", context={"name": "x"})))
    obj.update(fields)
    return json.dumps(obj).encode()


BAD_BODIES = {
    "nul in the template name": _body("bad:nul", template="wel\u0000come"),
    "lone surrogate in the key": _body("x", id="sur\ud800rogate"),
    "nul in the key": _body("x", id="bad\u0000key"),
    "not json, starting with a nul": b"\x00 not json",
    "a key that is a number": _body("x", id=12345),
    "a recipient that is a number": _body("bad:to", to=[12]),
    "a key longer than a key may be": _body("x", id="k" * (KEY_LIMIT + 1)),
    "context that is a list": _body("bad:ctx", context=[1, 2]),
    "a template name of 60,000 characters": _body("bad:long", template="t" * 60_000),
}


def _buried_reasons(store: Store) -> list[str]:
    return [r[0] for r in store.all("SELECT reason FROM failures WHERE outcome = 'poison'")]


@pytest.mark.parametrize("what", list(BAD_BODIES))
def test_a_bad_job_in_a_batch_is_buried_alone_and_the_batch_is_delivered(
        settings: Settings, smtp: SmtpServer, store_location: str, what: str) -> None:
    settings = settings.replace(store=store_location, batch=16)
    notifier = Notifier(settings.beanstalk_url)
    with connect(settings.beanstalk_url, encoding=None, use="mail.urgent") as c:
        for i in range(GOOD // 2):
            notifier.notify("welcome", f"good{i}@example.com", {"name": f"g{i}"}, key=f"good:{i}", priority="urgent")
        bad = c.put(BAD_BODIES[what])
        for i in range(GOOD // 2, GOOD):
            notifier.notify("welcome", f"good{i}@example.com", {"name": f"g{i}"}, key=f"good:{i}", priority="urgent")
    run_burst(settings)  # asserts the worker ended with 0: no crash
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == sorted(f"good{i}@example.com" for i in range(GOOD))
    store = Store(store_location)
    counts = store.outcome_counts()  # the bad job's key has a row of its own when it can be stored
    assert counts.pop("sent") == GOOD and set(counts) <= {"poison"}, counts
    with connect(settings.beanstalk_url, encoding=None) as c:
        assert c.stats_job(bad)["state"] == "buried"
        assert c.stats_tube("mail.urgent")["current-jobs-buried"] == 1
    [reason] = _buried_reasons(store)
    assert reason.startswith(("bad envelope", "unstorable job")), reason
    print(f"{what}: {GOOD} good jobs delivered, 1 buried: {reason}")


def test_a_store_statement_that_fails_for_one_job_claims_the_others_one_by_one(store_location: str) -> None:
    """Past the pipeline's own check (a caller of the store with a NUL in a template): the batch's
    transaction fails, each job is tried alone, only the one the store refuses is poison."""
    store = Store(store_location)
    items = [("k:1", "a@example.com", "t"), ("k:2", "b@example.com", "t\u0000"), ("k:3", "c@example.com", "t")]
    taken = store.claim_many(items, lease=60)
    if "postgresql" in store_location:  # PostgreSQL's text holds no NUL
        assert taken[0] == 1 and taken[2] == 1 and "refused this job's claim" in taken[1].reason
    else:  # SQLite stores it
        assert taken == [1, 1, 1]
    lone = store.claim_many([("k:4", "d@example.com", "t"), ("k:\ud800", "e@example.com", "t")], lease=60)
    assert lone[0] == 1 and "refused this job's claim" in lone[1].reason


def test_a_failure_record_of_any_body_is_written(store_location: str) -> None:
    store = Store(store_location)
    store.record_failure("s", 1, "mail.urgent", "poison", "bad envelope: \x00\ud800", b"\x00 not json \xff")
    [(outcome, reason, _)] = [store.failure("s", 1)]
    assert outcome == "poison" and "\x00" not in reason


def test_a_long_mailout_key_gives_each_recipient_a_key_that_fits(settings: Settings, smtp: SmtpServer) -> None:
    """Measured before: a 190-character key's chunk was accepted and every recipient's job buried
    ('id' is longer than 200 characters)."""
    key = "m" * 190
    Notifier(settings.beanstalk_url).mailout("welcome", [f"long{i}@example.com" for i in range(3)], {"name": "x"},
                                             key=key)
    store = Store(settings.store)
    assert Worker(settings, Fanout(settings), store, tubes=("mailout",)).run(burst=True) == 0
    run_burst(settings)
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == [f"long{i}@example.com" for i in range(3)]
    assert Store(settings.store).outcome_counts() == {"sent": 3}


def test_recipient_keys_are_kept_when_short_and_derived_to_fit_when_long() -> None:
    assert recipient_key("news:1", "A@Example.com") == "news:1:a@example.com"
    long_a, long_b = recipient_key("m" * 190, "a@example.com"), recipient_key("m" * 190, "b@example.com")
    assert len(long_a) == KEY_LIMIT and long_a != long_b and long_a == recipient_key("m" * 190, "A@example.com")
    assert recipient_key("m" * 190 + "x", "a@example.com") != long_a
