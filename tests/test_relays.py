"""Bulk never plugs a relay, with a real Postfix (issue 26): bulk mail goes through its own Postfix
relay, whose next hop is down, so the relay's queue grows. At BEANMAIL_RELAY_QUEUE_HIGH (read with
`postqueue -j`) bulk is held in beanstalkd at no retry's cost, while urgent mail goes through the
urgent relay (a second Postfix) and arrives. Once the next hop is back the queue drains, bulk
resumes, and every message arrives once (counted by Message-ID at the final server)."""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.client import connect
from worker.relays.book import book_for
from worker.settings import Settings
from worker.store import Store
from worker.web import metrics
from worker.web.app import Console

from .conftest import bare_env, beanmail, running_worker
from .relay import PostfixRelay
from .servers import SmtpServer, wait_until

HIGH = 5  # the high-water mark
BULK = 12  # bulk messages: more than the mark


@pytest.fixture
def relays() -> Iterator[tuple[PostfixRelay, PostfixRelay, SmtpServer, SmtpServer]]:
    """(bulk relay, urgent relay, the bulk relay's next hop (not started: down), the urgent
    relay's next hop (up)). The bulk relay queues what it cannot pass on, as production does
    (the shared relay fixture bounces at once), and retries its queue every second."""
    next_hop = SmtpServer()
    urgent_hop = SmtpServer().start()
    bulk = PostfixRelay(f"127.0.0.1:{next_hop.port}",
                        main_cf={"maximal_queue_lifetime": "1h", "bounce_queue_lifetime": "1h"})
    urgent = PostfixRelay(f"127.0.0.1:{urgent_hop.port}")
    try:
        with ThreadPoolExecutor(2) as both:  # a Postfix takes about two seconds to start, and to stop
            list(both.map(PostfixRelay.start, (bulk, urgent)))
        yield bulk, urgent, next_hop, urgent_hop
    finally:
        with ThreadPoolExecutor(2) as both:
            list(both.map(PostfixRelay.stop, (bulk, urgent)))
        next_hop.stop()
        urgent_hop.stop()


def releases(settings: Settings, job_id: int) -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return int(c.stats_job(job_id)["releases"])


def test_bulk_holds_at_the_relays_high_water_mark_while_urgent_mail_goes_through_its_own_relay(
        settings: Settings, notifier: Notifier, smtp: SmtpServer, tmp_path: Path,
        relays: tuple[PostfixRelay, PostfixRelay, SmtpServer, SmtpServer]) -> None:
    bulk_relay, urgent_relay, next_hop, urgent_hop = relays
    settings = settings.replace(smtp_url_bulk=bulk_relay.url, smtp_url_urgent=urgent_relay.url,
                                relay_queue_command=bulk_relay.queue_command(), relay_queue_high=HIGH,
                                relay_queue_interval=0.3, relay_hold_delay=1)
    bulk_jobs = {notifier.notify("welcome", f"reader{i}@example.com", {"name": f"r{i}"}, priority="bulk",
                                 key=f"news:{i}"): f"news:{i}" for i in range(BULK)}
    lengths: list[int] = []
    sampling = threading.Event()

    def sample() -> None:  # the relay's queue, all along, as the operator's command sees it
        while not sampling.wait(0.1):  # every 0.1 s until told to stop
            lengths.append(bulk_relay.queue_length())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    store = Store(settings.store)
    try:
        with running_worker(settings):
            def outcomes() -> collections.Counter:
                return collections.Counter(
                    "held" if "bulk held" in d.reason else d.outcome
                    for k in bulk_jobs.values() for d in store.deliveries(key=k, limit=1))
            wait_until(lambda: outcomes() == {"sent": HIGH, "held": BULK - HIGH}, 60,
                       f"{HIGH} bulk sent and {BULK - HIGH} held ({outcomes()})")
            held_jobs = [j for j, k in bulk_jobs.items() if store.deliveries(key=k, limit=1)[0].outcome != "sent"]
            # held again and again (each hold a release of 1 s), and still at the mark
            wait_until(lambda: all(releases(settings, j) >= 2 for j in held_jobs), 60, "held bulk held again")
            assert bulk_relay.queue_length() == HIGH and max(lengths) == HIGH, lengths
            assert all(store.deliveries(key=bulk_jobs[j], limit=1)[0].outcome == "deferred" for j in held_jobs)
            assert not next_hop.messages
            with connect(settings.beanstalk_url, encoding=None) as c:  # held jobs wait in beanstalkd, not churned
                assert int(c.stats_tube("mail.bulk")["cmd-pause-tube"]) >= 1

            # the relay's state as the operator sees it: beanmail status and /metrics
            env = bare_env(settings, BEANMAIL_SMTP_URL_BULK=bulk_relay.url, BEANMAIL_SMTP_URL_URGENT=urgent_relay.url,
                           BEANMAIL_RELAY_QUEUE_COMMAND=settings.relay_queue_command,
                           BEANMAIL_RELAY_QUEUE_HIGH=str(HIGH))

            def bulk_view() -> dict:
                report = json.loads(beanmail("status", "--json", env=env, check=False).stdout)
                [view] = [r for r in report["relays"] if r["relay"] == f"smtp://127.0.0.1:{bulk_relay.port}"]
                return view
            wait_until(lambda: (bulk_view()["workers"] or {}).get("queue") == HIGH, 30, "status to show the queue")
            view = bulk_view()
            assert view["answers"] and view["priorities"] == ["bulk"] and view["workers"]["queue"] == HIGH
            assert re.search(r"queue 5( and \d+ just sent)? at or above BEANMAIL_RELAY_QUEUE_HIGH 5", view["workers"]["held"])
            shown = beanmail("status", env=env, check=False).stdout
            print("\n" + shown[shown.index("relays:"):shown.index("supervisord")])
            assert f"smtp://127.0.0.1:{bulk_relay.port}" in shown and "bulk HELD: queue 5" in shown
            text = metrics.exposition(Console(settings))[0].decode()
            name = f'relay="smtp://127.0.0.1:{bulk_relay.port}"'
            assert f"beanmail_relay_queue{{{name}}} 5.0" in text and f"beanmail_relay_bulk_held{{{name}}} 1.0" in text
            assert f"beanmail_relay_up{{{name}}} 1.0" in text

            # urgent mail meanwhile: through its own relay, to its recipient
            asked = time.monotonic()
            notifier.notify("welcome", "ceo@example.com", {"name": "C"}, priority="urgent", key="reset:1")
            [urgent] = urgent_hop.wait_for(1, 30)
            print(f"\nurgent mail through the urgent Postfix relay arrived {urgent.at - asked:.3f}s after"
                  f" its enqueue, bulk held at {HIGH} in the bulk relay's queue")
            assert urgent.rcpt_tos == ["ceo@example.com"]

            # the next hop back: the relay's queue drains and bulk resumes
            held_releases = sum(releases(settings, j) for j in held_jobs)
            back = time.monotonic()
            next_hop.start()
            bulk_relay.flush()
            wait_until(lambda: len(next_hop.messages) >= BULK, 90,
                       f"every bulk message at the next hop ({len(next_hop.messages)})")
            wait_until(lambda: outcomes() == {"sent": BULK}, 30, f"every bulk key sent ({outcomes()})")
            wait_until(lambda: bulk_relay.queue_length() == 0, 30, "the relay's queue to drain")
            print(f"next hop back: {BULK} bulk messages delivered in {time.monotonic() - back:.2f}s;"
                  f" the relay's queue peaked at {max(lengths)}; {len(held_jobs)} held jobs had been"
                  f" released {held_releases} times in all meanwhile (no retry spent)")
    finally:
        sampling.set()
        sampler.join(5)
        store.close()
    ids = collections.Counter(m.message["Message-ID"] for m in next_hop.messages)
    assert len(ids) == BULK and set(ids.values()) == {1}, ids  # every message once
    assert sorted(r for m in next_hop.messages for r in m.rcpt_tos) == sorted(f"reader{i}@example.com" for i in range(BULK))
    assert not smtp.messages  # nothing fell back to the normal relay
    assert book_for(settings).relays[f"smtp://127.0.0.1:{bulk_relay.port}"].held == ""


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_dead_relay_of_the_list_is_skipped_and_the_next_one_takes_the_mail(
        settings: Settings, notifier: Notifier, smtp: SmtpServer, concurrency: int) -> None:
    """BEANMAIL_SMTP_URL as a list, its first relay refusing connections: every message arrives
    through the second, once, in the blocking pipeline and with sends in flight on the event loop;
    /metrics shows the first relay skipped."""
    dead = SmtpServer()  # never started: its port refuses
    settings = settings.replace(smtp_url=f"{dead.url},{smtp.url}", concurrency=concurrency, relay_retry_after=60)
    for i in range(6):
        notifier.notify("welcome", f"u{i}@example.com", {"name": "u"}, priority=("urgent", "normal", "bulk")[i % 3],
                        key=f"list:{i}")
    with running_worker(settings):
        smtp.wait_for(6, 30)
        wait_until(lambda: f'beanmail_relay_up{{relay="smtp://127.0.0.1:{dead.port}"}} 0.0'
                   in metrics.exposition(Console(settings))[0].decode(), 15, "the dead relay shown down")
        text = metrics.exposition(Console(settings))[0].decode()
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == sorted(f"u{i}@example.com" for i in range(6))
    assert f'beanmail_relay_up{{relay="smtp://127.0.0.1:{smtp.port}"}} 1.0' in text
    relay = book_for(settings).relays[f"smtp://127.0.0.1:{dead.port}"]
    assert relay.failed_over >= 1 and "ConnectionRefusedError" in relay.down_reason


def test_status_is_unhealthy_only_when_a_priority_has_no_relay_that_answers(settings: Settings,
                                                                            smtp: SmtpServer) -> None:
    from worker import health

    dead, also_dead = SmtpServer(), SmtpServer()
    one_down = settings.replace(smtp_url=f"{dead.url},{smtp.url}")
    assert health.relay_problem(one_down, 2.0) == ""  # its mail fails over to the second
    urgent_down = one_down.replace(smtp_url_urgent=also_dead.url, smtp_url=dead.url)
    problem = health.relay_problem(urgent_down, 2.0)
    assert problem.startswith("relay: none answers for urgent, normal, bulk mail: ")
    assert f"smtp://127.0.0.1:{also_dead.port}: cannot connect" in problem
