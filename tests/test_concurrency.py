"""BEANMAIL_CONCURRENCY through a relay: many sends in flight on one event loop, each outcome
classified as the blocking session classifies it, nothing sent twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from producer import Notifier
from producer.client import connect
from worker.flight import Flight, sending_stage
from worker.loop import Worker
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, run_burst, running_worker
from .servers import SmtpServer, wait_until


def test_concurrency_runs_many_sessions_on_one_thread(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    """40 messages to a server that takes 1 s each, 20 in flight: 20 sessions open at once, all
    served by one helper thread beside the loop's."""
    smtp.handler.data_delay = 1.0
    settings = settings.replace(concurrency=20)
    for i in range(40):
        notifier.notify("welcome", f"c{i}@example.com", {"name": "c"}, key=f"conc:{i}")
    store = Store(settings.store)
    stage = sending_stage(settings, store)
    assert isinstance(stage, Flight)
    worker = Worker(settings, stage, store)
    peak = {"threads": 0, "flying": 0}

    def watch() -> None:
        while not done.is_set():
            peak["flying"] = max(peak["flying"], stage.in_flight)
            peak["threads"] = max(peak["threads"], threading.active_count())
            done.wait(0.05)
    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    threads_before = threading.active_count()
    try:
        assert worker.run(burst=True) == 0
    finally:
        done.set()
        watcher.join()
    assert sorted(str(m.rcpt_tos[0]) for m in smtp.messages) == sorted(f"c{i}@example.com" for i in range(40))
    assert smtp.handler.connections == 20  # sessions opened once and kept for the second round
    assert peak["flying"] == 20
    assert peak["threads"] <= threads_before + 1  # the event loop's one thread, not one per session
    assert Counter(d.outcome for d in store.deliveries(limit=100)) == {"sent": 40}


@pytest.mark.parametrize("concurrency", [1, 4], ids=["blocking", "event-loop"])
def test_refusals_are_classified_alike_blocking_or_in_flight(settings: Settings, smtp: SmtpServer,
                                                             concurrency: int) -> None:
    settings = settings.replace(concurrency=concurrency, max_attempts=3)
    notifier = Notifier(settings.beanstalk_url)
    cases = {"ok": "ok@example.com", "temp": "tempfail@example.com", "hard": "reject@example.com",
             "policy": "spamtrap@example.com"}
    for key, address in cases.items():
        notifier.notify("welcome", address, {"name": "r"}, key=key)
    run_burst(settings)
    store = Store(settings.store)
    got = {k: store.deliveries(key=k)[0] for k in cases}
    assert got["ok"].outcome == "sent" and got["ok"].reply.startswith("250")
    assert got["temp"].outcome == "deferred" and "451" in got["temp"].reason
    assert got["hard"].outcome == "bounced" and "550 5.1.1" in got["hard"].reason
    assert got["policy"].outcome == "bounced" and "5.7.1" in got["policy"].reason
    assert store.suppressed("reject@example.com") is not None  # a hard bounce suppresses
    assert store.suppressed("spamtrap@example.com") is None  # a policy refusal does not
    assert [str(m.rcpt_tos[0]) for m in smtp.messages] == ["ok@example.com"]


def test_a_message_refused_at_the_end_of_data_and_a_server_gone_quiet(settings: Settings, smtp: SmtpServer) -> None:
    settings = settings.replace(concurrency=4, smtp_data_timeout=1, in_doubt_delay=600)
    notifier = Notifier(settings.beanstalk_url)
    smtp.handler.data_reply = "554 5.6.0 Message content rejected"
    notifier.notify("welcome", "a@example.com", {"name": "x"}, key="content")
    run_burst(settings)
    store = Store(settings.store)
    assert store.deliveries(key="content")[0].outcome == "bounced"
    smtp.handler.data_reply = None
    smtp.handler.data_delay = 3  # takes the message, answers after the data timeout
    quiet = [notifier.notify("welcome", "b@example.com", {"name": "x"}, key="quiet") for _ in range(2)]  # 2 copies
    run_burst(settings)
    row = store.deliveries(key="quiet")[0]
    assert row.outcome == "in_doubt" and "no reply to the end of data" in row.reason
    with connect(settings.beanstalk_url, encoding=None) as c:  # both copies held for the in-doubt delay
        assert [int(c.stats_job(j)["delay"]) for j in quiet] == [600, 600]
    assert len(smtp.messages) <= 1  # the session was dropped mid-reply: taken once at most, never twice


def test_a_kept_session_the_server_closed_is_reopened(settings: Settings, smtp: SmtpServer) -> None:
    settings = settings.replace(concurrency=2)
    notifier = Notifier(settings.beanstalk_url)
    with running_worker(settings) as worker:
        assert isinstance(worker.stage, Flight)
        notifier.notify("welcome", "first@example.com", {"name": "x"}, key="first")
        smtp.wait_for(1, timeout=10)
        port = smtp.port
        smtp.stop()  # the kept session's server goes away and comes back on the same port
        restarted = SmtpServer(port=port).start()
        try:
            notifier.notify("welcome", "second@example.com", {"name": "x"}, key="second")
            restarted.wait_for(1, timeout=10)
        finally:
            restarted.stop()
    assert Store(settings.store).deliveries(key="second")[0].outcome == "sent"
    assert [str(m.rcpt_tos[0]) for m in restarted.messages] == ["second@example.com"]


def test_concurrency_and_its_older_name_threads() -> None:
    from worker import settings as settings_mod

    base = {"BEANMAIL_TEMPLATES": str(ROOT / "templates")}
    assert settings_mod.load({**base, "BEANMAIL_CONCURRENCY": "250"}).in_flight == 250
    assert settings_mod.load({**base, "BEANMAIL_THREADS": "8"}).in_flight == 8  # still read
    assert settings_mod.load(base).in_flight == 1 and settings_mod.load(base).batch == 16
    with pytest.raises(settings_mod.SettingsError, match="disagree: set one"):
        settings_mod.load({**base, "BEANMAIL_CONCURRENCY": "250", "BEANMAIL_THREADS": "8"})
    with pytest.raises(settings_mod.SettingsError, match="BEANMAIL_BATCH"):
        settings_mod.load({**base, "BEANMAIL_BATCH": "0"})
