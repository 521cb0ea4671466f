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
    assert session._smtp.has_extn("pipelining")
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
