"""The pipelined SMTP path against Postfix's smtp-sink (aiosmtpd does not offer PIPELINING)."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Iterator

import pytest

from producer import Notifier
from worker.settings import Settings
from worker.store import Store
from worker.transports.smtp import SmtpSession

from .conftest import run_burst
from .servers import SmtpSink


@pytest.fixture
def sink_factory() -> Iterator:
    sinks: list[SmtpSink] = []

    def make(*options: str) -> SmtpSink:
        sinks.append(SmtpSink(*options))
        return sinks[-1]
    yield make
    for s in sinks:
        s.stop()


def test_pipelined_delivery_is_byte_for_byte_what_was_built(settings: Settings, notifier: Notifier,
                                                            sink_factory) -> None:
    sink = sink_factory()
    notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë", "url": ".starts-with-a-dot"}, key="p1")
    notifier.notify("password_reset", "bob@example.com", {"reset_url": "https://x.example/r"}, key="p2")
    run_burst(settings.replace(smtp_url=sink.url))
    session = SmtpSession(settings.replace(smtp_url=sink.url).smtp)
    session.connect()
    assert "PIPELINING" in session.extensions
    session.close()
    dumps = sink.messages()
    assert len(dumps) == 2
    messages = {str(m["To"]): m for m in (message_from_bytes(d, policy=policy.default) for d in dumps)}
    welcome = messages["Zoë <zoe@example.com>"]
    assert welcome["Subject"] == "Welcome to beanmail, Zoë!"
    assert "Hello Zoë," in welcome.get_body(("plain",)).get_content()
    assert Store(settings.store).outcome_counts() == {"sent": 2}


@pytest.mark.parametrize("options, outcome, reply", [
    (("-f", "rcpt", "-B", "550 5.1.1 No such user"), "bounced", "550 5.1.1"),  # the address refused (pipelined)
    (("-f", "rcpt"), "bounced", "500 5.3.0"),      # 5xx for the recipient, but a system status
    (("-r", "rcpt"), "deferred", "450 4.3.0"),     # 4xx for the recipient
    (("-f", "."), "bounced", "500 5.3.0"),         # message refused after its end
    (("-r", "."), "deferred", "450 4.3.0"),
    (("-f", "mail"), "bounced", "500 5.3.0"),
    (("-Q", "data"), "deferred", ""),              # 421 and a dropped connection
])
def test_pipelined_replies_are_classified(settings: Settings, notifier: Notifier, sink_factory,
                                          options: tuple[str, ...], outcome: str, reply: str) -> None:
    sink = sink_factory(*options)
    notifier.notify("welcome", "zoe@example.com", {"name": "x"}, key="k")
    run_burst(settings.replace(smtp_url=sink.url))
    [row] = Store(settings.store).deliveries(key="k")
    assert row.outcome == outcome and row.reply.startswith(reply)
    if options[1] != ".":  # refused before the data: nothing was transferred (smtp-sink dumps what it read)
        assert sink.messages() == []
    store = Store(settings.store)
    hard = reply.startswith("550 5.1.1")
    assert (store.suppressed("zoe@example.com") is not None) == hard  # only a refused address is suppressed


def test_a_connection_dropped_mid_transaction_is_reopened_for_the_next_job(settings: Settings, notifier: Notifier,
                                                                           sink_factory) -> None:
    sink = sink_factory("-Q", "rcpt")  # every session dies at RCPT
    good = sink_factory()
    notifier.notify("welcome", "a@example.com", {"name": "x"}, key="dropped")
    run_burst(settings.replace(smtp_url=sink.url))
    assert Store(settings.store).deliveries(key="dropped")[0].outcome == "deferred"
    notifier.notify("welcome", "b@example.com", {"name": "x"}, key="fine")
    run_burst(settings.replace(smtp_url=good.url))
    assert Store(settings.store).deliveries(key="fine")[0].outcome == "sent"


def test_a_batch_goes_in_one_session_each_content_with_the_next_envelope(settings: Settings, notifier: Notifier,
                                                                         sink_factory) -> None:
    """Six jobs reserved as one batch: one session, each message's content, end and the next
    envelope in one write; every message arrives whole and once."""
    sink = sink_factory()
    for i in range(6):
        notifier.notify("welcome", f"user{i}@example.com", {"name": f"n{i}", "url": ".dot"}, key=f"b{i}")
    run_burst(settings.replace(smtp_url=sink.url, batch=6))
    dumps = [message_from_bytes(d, policy=policy.default) for d in sink.messages()]
    assert sorted(str(m["To"]) for m in dumps) == [f"user{i}@example.com" for i in range(6)]
    assert all(f"Hello n{str(m['To'])[4]}," in m.get_body(("plain",)).get_content() for m in dumps)
    assert Store(settings.store).outcome_counts() == {"sent": 6}


@pytest.mark.parametrize("options, outcome, reply", [
    # smtp-sink's -f and -r turn PIPELINING off: one message at a time, each refusal its own
    (("-f", "rcpt", "-B", "550 5.1.1 No such user"), "bounced", "550 5.1.1"),
    (("-r", "."), "deferred", "450 4.3.0"),
    # pipelined: dropped at DATA or at RCPT, the rest go on fresh connections
    (("-Q", "data"), "deferred", "421 4.0.0"),
    (("-Q", "rcpt"), "deferred", ""),
    # pipelined: no reply to the end of data (the next envelope already sent): in doubt, each
    (("-q", "."), "in_doubt", ""),
])
def test_every_message_of_a_pipelined_batch_gets_its_own_outcome(settings: Settings, notifier: Notifier, sink_factory,
                                                                 options: tuple[str, ...], outcome: str,
                                                                 reply: str) -> None:
    sink = sink_factory(*options)
    for i in range(3):
        notifier.notify("welcome", f"zoe{i}@example.com", {"name": "x"}, key=f"k{i}")
    run_burst(settings.replace(smtp_url=sink.url, batch=3, max_attempts=5))
    store = Store(settings.store)
    rows = [store.deliveries(key=f"k{i}")[0] for i in range(3)]
    assert [(r.outcome, r.reply[:len(reply)]) for r in rows] == [(outcome, reply)] * 3
