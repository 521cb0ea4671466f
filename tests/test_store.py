"""The delivery store on both backends: SQLite and a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from worker.outcomes import Deferred, Skipped
from worker.store import MIGRATIONS, Finish, Store

from .servers import wait_until


def test_a_key_is_claimed_once_and_skipped_after_it_was_sent(store_location: str) -> None:
    store = Store(store_location)
    store.claim("k", "a@x.example", "welcome", lease=30)
    store.claim("k", "a@x.example", "welcome", lease=30)  # the same process may retry its own claim
    store.me = "otherhost:1"
    with pytest.raises(Deferred, match="claimed by"):
        store.claim("k", "a@x.example", "welcome", lease=30)
    store.me = "thishost:1"
    store.finish("k", "a@x.example", "welcome", "sent", reply="250 ok")
    with pytest.raises(Skipped, match="already sent"):
        store.claim("k", "a@x.example", "welcome", lease=30)
    [row] = store.deliveries(key="k")
    assert (row.outcome, row.attempts, row.reply) == ("sent", 2, "250 ok")


def test_an_expired_claim_is_taken_over(store_location: str) -> None:
    store = Store(store_location)
    store.me = "elsewhere:1"
    store.claim("k", "a@x.example", "t", lease=-1)
    store.me = "here:2"
    store.claim("k", "a@x.example", "t", lease=30)
    assert store.deliveries(key="k")[0].attempts == 2


def test_a_deferred_key_can_be_claimed_again(store_location: str) -> None:
    store = Store(store_location)
    store.claim("k", "a@x.example", "t", lease=30)
    store.finish("k", "a@x.example", "t", "deferred", "451")
    store.me = "other:1"
    store.claim("k", "a@x.example", "t", lease=30)


def test_a_job_that_never_held_the_claim_does_not_overwrite_an_ended_row(store_location: str) -> None:
    store = Store(store_location)
    store.finish("k", "a@x.example", "t", "sent")
    store.finish("k", "a@x.example", "t", "skipped", "expired", overwrite_final=False)
    assert store.deliveries(key="k")[0].outcome == "sent"


def _claim_all(location: str, keys: list[str], queue: "multiprocessing.Queue[list[str]]") -> None:
    store = Store(location)
    won = []
    for key in keys:
        try:
            store.claim(key, "a@x.example", "t", lease=30)
        except (Skipped, Deferred):
            continue
        won.append(key)
        store.finish(key, "a@x.example", "t", "sent")
    queue.put(won)


def test_concurrent_workers_claim_each_key_exactly_once(store_location: str) -> None:
    Store(store_location).close()  # migrate once up front
    keys = [f"k{i}" for i in range(100)]
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store_location, keys[::1 if i % 2 else -1], queue)) for i in range(4)]
    for p in procs:
        p.start()
    won = [k for _ in procs for k in queue.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(won) == sorted(keys)  # every key once, none twice


def test_suppression_list(store_location: str) -> None:
    store = Store(store_location)
    store.suppress("Zoe@X.example", "550 5.1.1", "bounce")
    assert store.suppressed("zoe@x.example") == ("bounce", "550 5.1.1")
    assert [r[:2] for r in store.suppression_list()] == [("zoe@x.example", "bounce")]
    assert store.unsuppress("zoe@x.example") and not store.unsuppress("zoe@x.example")
    assert store.suppressed("zoe@x.example") is None


def test_failures_are_recorded_per_job(store_location: str) -> None:
    store = Store(store_location)
    store.record_failure("beanstalk://h:1", 7, "mail.normal", "poison", "bad envelope", b"\xff{}")
    store.record_failure("beanstalk://h:1", 9, "mail.bulk", "exhausted", "8 attempts", b"{}")
    assert store.failure("beanstalk://h:1", 7)[:2] == ("poison", "bad envelope")
    assert store.failed_job_ids("beanstalk://h:1") == [9, 7]
    assert store.failure("beanstalk://other:1", 7) is None


def test_rate_slots_are_booked_per_job(store_location: str) -> None:
    store = Store(store_location)
    t = 1000.0
    assert store.take_slot("x.example", 2.0, "a", now=t) == 0
    assert store.take_slot("x.example", 2.0, "b", now=t) == pytest.approx(0.5)
    assert store.take_slot("x.example", 2.0, "c", now=t) == pytest.approx(1.0)
    assert store.take_slot("y.example", 2.0, "d", now=t) == 0  # another domain is not held up
    assert store.take_slot("x.example", 2.0, "b", now=t + 0.2) == pytest.approx(0.3)  # still waiting
    assert store.take_slot("x.example", 2.0, "b", now=t + 1.0) == 0  # back at its slot: goes
    assert store.take_slot("x.example", 2.0, "c", now=t + 1.0) == 0


def test_schema_is_created_once_and_reopening_migrates_nothing(store_location: str) -> None:
    Store(store_location).suppress("a@x.example", "r", "operator")
    store = Store(store_location)
    assert store.suppressed("a@x.example") is not None
    assert store.schema() == set(MIGRATIONS)


def _open(location: str, barrier: "multiprocessing.synchronize.Barrier", queue: "multiprocessing.Queue[str]") -> None:
    barrier.wait()
    try:
        Store(location).suppressed("a@x.example")
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        queue.put(repr(exc))


@pytest.mark.server
def test_many_workers_starting_at_once_on_a_new_store(tmp_path: Path) -> None:
    """supervisord starts a whole pool at once; none of it may fail creating the SQLite store.
    (Switching a new file to WAL races in a way SQLite's busy timeout does not cover: before
    the fix several of these forty rounds failed.)"""
    # forkserver: forked from a process with no threads (pytest's may hold a lock at fork time,
    # and a child forked then can hang for good)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # imported once there, not in every child
    failures = []
    for round_ in range(40):
        location = str(tmp_path / f"new{round_}.sqlite3")
        barrier, queue = ctx.Barrier(12), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(location, barrier, queue)) for _ in range(12)]
        for p in procs:
            p.start()
        failures += [r for r in (queue.get(timeout=60) for _ in procs) if r != "ok"]
        for p in procs:
            p.join(30)
    assert failures == []


def test_mx_slots_are_counted_for_the_whole_fleet_and_free_themselves(store_location: str) -> None:
    a, b = Store(store_location), Store(store_location)
    assert a.take_mx_slot("x.example", "h1:1:mx1", cap=2, lease=60)
    assert b.take_mx_slot("x.example", "h2:1:mx1", cap=2, lease=60)
    assert not b.take_mx_slot("x.example", "h2:1:mx2", cap=2, lease=60)  # two open in the fleet
    assert a.take_mx_slot("x.example", "h1:1:mx1", cap=2, lease=60)  # a holder renews its own
    assert b.take_mx_slot("y.example", "h2:1:mx2", cap=2, lease=60)  # another domain counts apart
    a.drop_mx_slot("x.example", "h1:1:mx1")
    assert b.take_mx_slot("x.example", "h2:1:mx2", cap=2, lease=0.01)
    assert wait_until(lambda: a.take_mx_slot("x.example", "h1:1:mx3", cap=2, lease=60), 5, "an expired slot")


def test_a_batch_of_claims_and_finishes_answers_each_key_as_one_at_a_time_would(store_location: str) -> None:
    """Claims and finishes go in one batched statement each (PostgreSQL pipelines them): every
    key still gets its own answer, the contested ones theirs."""
    store = Store(store_location)
    store.finish("ended", "a@x.example", "t", "sent")
    store.finish("doubt", "a@x.example", "t", "in_doubt", hold=600)
    me = store.me
    store.me = "otherhost:1"
    store.claim("held", "a@x.example", "t", lease=600)
    store.me = me
    store.claim("mine", "a@x.example", "t", lease=600)
    keys = ["new", "ended", "held", "mine", "doubt", "new2"]
    taken = store.claim_many([(k, "a@x.example", "t") for k in keys], lease=600)
    assert taken[0] == 1 and taken[3] == 2 and taken[5] == 1
    assert isinstance(taken[1], Skipped) and "already sent" in taken[1].reason
    assert isinstance(taken[2], Deferred) and "claimed by otherhost:1" in taken[2].reason
    assert isinstance(taken[4], Deferred) and "in doubt" in taken[4].reason
    store.finish_many([Finish("new", "a@x.example", "t", "sent", reply="250 ok"),
                       Finish("ended", "a@x.example", "t", "skipped", "expired", overwrite_final=False),
                       Finish("held", "a@x.example", "t", "skipped", "expired", overwrite_final=False),
                       Finish("mine", "a@x.example", "t", "deferred", "451", free=True),
                       Finish("new2", "a@x.example", "t", "bounced", "550")])
    assert {d.key: d.outcome for d in store.deliveries(limit=10)} == {
        "new": "sent", "ended": "sent", "held": "claimed", "mine": "deferred", "doubt": "in_doubt", "new2": "bounced"}
    assert store.free_releases("mine") == 1 and store.deliveries(key="new")[0].reply == "250 ok"
