"""Micro-batching: several jobs reserved in one round trip, claimed in one store transaction and
recorded in one, with every promise kept: each key sent once, a batch kept reserved while one
slow send holds it, and a worker killed mid-batch neither losing a job nor sending it again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter

import greenstalk

from producer import Notifier
from producer.beanstalk import reserve_batch
from producer.client import connect
from worker.outcomes import Skipped
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, run_burst, running_worker
from .servers import Beanstalkd, SmtpServer, wait_until


def test_one_write_deletes_and_reserves_a_batch_the_first_waiting(beanstalkd: Beanstalkd) -> None:
    client = connect(beanstalkd.url, encoding=None, watch=["t"], use="t")
    ids = [client.put(b"job-%d" % i) for i in range(5)]
    batch = reserve_batch(client, [], 1, 3)
    assert [j.id for j in batch] == ids[:3]
    rest = reserve_batch(client, [j.id for j in batch], 0, 10)  # deletes ride along; only 2 were left
    assert [j.body for j in rest] == [b"job-3", b"job-4"]
    for job_id in ids[:3]:
        try:
            client.stats_job(job_id)
            raise AssertionError(f"job {job_id} was not deleted")
        except greenstalk.NotFoundError:
            pass
    assert reserve_batch(client, [j.id for j in rest], 0, 4) == []  # nothing ready: no job, no error
    later = threading.Timer(0.3, lambda: connect(beanstalkd.url, encoding=None, use="t").put(b"late"))
    later.start()
    [late] = reserve_batch(client, [], 5, 4)  # the first reservation waits for a job to come (none: [])
    assert late.body == b"late"


def test_a_batch_is_claimed_and_recorded_once_per_key(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    keys = [f"batch:{i % 7}" for i in range(20)]  # 7 keys, most queued several times into one batch
    for key in keys:
        notifier.notify("welcome", f"{key.replace(':', '-')}@example.com", {"name": "b"}, key=key)
    run_burst(settings.replace(batch=20))
    got = Counter(str(m.rcpt_tos[0]) for m in smtp.messages)
    assert len(got) == 7 and set(got.values()) == {1}
    store = Store(settings.store)
    assert {store.deliveries(key=k)[0].outcome for k in set(keys)} == {"sent"}


def test_one_slow_send_keeps_the_whole_batch_reserved(settings: Settings, smtp: SmtpServer) -> None:
    """Three jobs in one batch, 2.5 s a send, a TTR of 3 s: the last waits 5 s for its turn, and is
    touched meanwhile instead of going back to the queue."""
    smtp.handler.data_delay = 2.5
    settings = settings.replace(ttr=3, smtp_timeout=2, batch=3)
    notifier = Notifier(settings.beanstalk_url, ttr=3)
    for i in range(3):
        notifier.notify("welcome", f"slow{i}@example.com", {"name": "s"}, key=f"slow:{i}")
    run_burst(settings)
    assert sorted(str(m.rcpt_tos[0]) for m in smtp.messages) == [f"slow{i}@example.com" for i in range(3)]
    with connect(settings.beanstalk_url, encoding=None) as c:
        assert int(c.stats()["job-timeouts"]) == 0


_DIES_MID_BATCH = """
import os, sys
sys.path.insert(0, {root!r})
from worker.store import Store
store = Store({location!r})
store.claim_many([("kill:1", "a@example.com", "t"), ("kill:2", "b@example.com", "t"),
                  ("kill:3", "c@example.com", "t")], lease=600)
store.journal.sent("kill:1")  # the server took 1 and 2; the process dies before the batch's commit
store.journal.sent("kill:2")
os.kill(os.getpid(), 9)
"""


def _die_mid_batch(location: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _DIES_MID_BATCH.format(root=str(ROOT), location=location)])
    assert proc.returncode == -9


def test_a_worker_killed_mid_batch_sends_nothing_again(store_location: str) -> None:
    _die_mid_batch(store_location)
    store = Store(store_location)
    for key in ("kill:1", "kill:2"):  # the journal says they went: recorded, not sent again
        taken = store.claim_many([(key, "x@example.com", "t")], lease=60)[0]
        assert isinstance(taken, Skipped) and "journal" in taken.reason
        assert store.deliveries(key=key)[0].outcome == "sent"
    assert store.claim_many([("kill:3", "c@example.com", "t")], lease=60) == [2]  # never sent: sent now


def test_a_starting_worker_records_what_a_killed_one_sent(store_location: str) -> None:
    _die_mid_batch(store_location)
    store = Store(store_location)
    assert store.recover_journals() == 2
    assert [store.deliveries(key=k)[0].outcome for k in ("kill:1", "kill:2", "kill:3")] == ["sent", "sent", "claimed"]
    assert store.journal.others() == []  # the dead worker's journal is gone once recorded
    assert store.recover_journals() == 0
    assert not os.path.exists(str(store.journal.dir / "nothing"))


def test_a_slow_relay_gets_small_batches_so_urgent_mail_waits_little(settings: Settings, smtp: SmtpServer) -> None:
    """0.1 s a message: after the first batch the worker takes one job at a time (a batch holds
    about 50 ms of sending), so an urgent mail queued behind the bulk goes next but one."""
    smtp.handler.data_delay = 0.1
    notifier = Notifier(settings.beanstalk_url)
    for i in range(40):
        notifier.notify("welcome", f"bulk{i}@example.com", {"name": "b"}, priority="bulk")
    with running_worker(settings):
        wait_until(lambda: len(smtp.messages) >= settings.batch + 2, 30, "the first batch to go")
        before = len(smtp.messages)
        notifier.notify("welcome", "urgent@example.com", {"name": "u"}, priority="urgent")
        wait_until(lambda: "urgent@example.com" in [m.rcpt_tos[0] for m in list(smtp.messages)], 30, "the urgent mail")
        position = [m.rcpt_tos[0] for m in smtp.messages].index("urgent@example.com") - before + 1
    assert position <= 2, position


def test_a_send_whose_record_failed_is_not_sent_again_by_the_same_worker(settings: Settings, smtp: SmtpServer) -> None:
    """The store fails the batch's record (an outage, injected here), beanstalkd gives the job
    back: the same worker records what it sent before it takes the job again, sends nothing."""
    from producer import envelope as env
    from worker.pipeline import Pipeline
    from worker.store import StoreUnavailable

    store = Store(settings.store)
    pipeline = Pipeline(settings, store)
    body = env.encode(env.Envelope(kind="mail", id="rec:1", to=(env.Recipient("a@example.com"),),
                                   template="welcome", context={"name": "x"}))
    recorded = store.finish_many

    def outage(rows: object) -> None:
        raise StoreUnavailable("store unavailable: disk I/O error")
    store.finish_many = outage  # type: ignore[method-assign]
    assert pipeline.run(body, 1).disposition.outcome == "sent"
    assert store.journal.pending == {"rec:1"}
    store.finish_many = recorded  # type: ignore[method-assign]
    again = pipeline.run(body, 1)
    assert again.disposition.outcome == "skipped" and "already sent" in again.disposition.reason
    assert len(smtp.messages) == 1
    assert store.deliveries(key="rec:1")[0].outcome == "sent" and store.journal.pending == set()
