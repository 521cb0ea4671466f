"""The retry policy (worker/outcomes.py), in the unit tier: how an attempt is counted from
beanstalkd's counters, the backoff's bounds, the waits that are no failure, and the fate each
outcome gets on a first and on a last attempt."""

from __future__ import annotations

import random

import pytest

from worker.outcomes import (Action, Bounced, Deferred, Fate, Greylisted, InDoubt, Outage, Poison, RetryPolicy,
                             Skipped, Wait, Withheld, disposition)
from worker.settings import Settings

pytestmark = pytest.mark.unit

POLICY = RetryPolicy(base=10, cap=100, max_attempts=3, in_doubt_delay=900, greylist_delay=120)


@pytest.mark.parametrize("releases, timeouts, buries, free, attempt", [
    (0, 0, 0, 0, 1),  # the first reservation
    (2, 0, 0, 0, 3),  # released twice: the third
    (1, 1, 0, 0, 3),  # a worker died holding it (TTR): that counts too
    (5, 0, 0, 4, 2),  # four of the releases were waits (a slot, a claim elsewhere): not counted
    (3, 0, 1, 0, 1),  # buried after 3, kicked by an operator: a fresh budget
    (0, 0, 0, 7, 1),  # never below the first
])
def test_an_attempt_is_counted_from_beanstalkds_counters_less_the_waits(releases: int, timeouts: int, buries: int,
                                                                         free: int, attempt: int) -> None:
    assert POLICY.attempt(releases, timeouts, buries, free) == attempt


def test_the_backoff_doubles_within_its_jitter_and_stops_at_the_cap() -> None:
    rng = random.Random(7)
    for attempt, (low, high) in {1: (5, 10), 2: (10, 20), 3: (20, 40), 5: (50, 100), 30: (50, 100)}.items():
        delays = {POLICY.delay(attempt, rng) for _ in range(200)}
        assert low <= min(delays) and max(delays) <= high and len(delays) > 3, (attempt, sorted(delays))


def test_a_wait_is_released_no_earlier_than_due_and_never_costs_an_attempt() -> None:
    assert Wait("slot", 0.2).delay == 1 and Wait("slot", 59.01).delay == 60 and Wait("slot", 60).delay == 60
    last = disposition(Wait("rate limit", 30), POLICY.max_attempts + 5, POLICY)
    assert (last.action, last.outcome, last.delay, last.free) == (Action.RELEASE, Fate.DEFERRED, 30, True)


def test_the_policy_is_built_from_the_settings_with_every_delay(tmp_path) -> None:  # noqa: ANN001
    s = Settings(store=str(tmp_path / "s.sqlite3"), backoff_base=7, backoff_max=70, max_attempts=4,
                 in_doubt_delay=600, greylist_delay=90)
    p = RetryPolicy.from_settings(s)
    assert (p.base, p.cap, p.max_attempts, p.in_doubt_delay, p.greylist_delay) == (7, 70, 4, 600, 90)
    assert p.busy >= 1 and p.unconfirmed >= 1 and p.journal_down >= 1


@pytest.mark.parametrize("outcome, first, last", [
    (None, (Action.DELETE, Fate.SENT, False), (Action.DELETE, Fate.SENT, False)),
    (Skipped("duplicate"), (Action.DELETE, Fate.SKIPPED, False), (Action.DELETE, Fate.SKIPPED, False)),
    (Bounced("550 5.1.1", hard=True), (Action.DELETE, Fate.BOUNCED, False), (Action.DELETE, Fate.BOUNCED, False)),
    (Poison("bad envelope"), (Action.BURY, Fate.POISON, False), (Action.BURY, Fate.POISON, False)),
    (Deferred("450 busy"), (Action.RELEASE, Fate.DEFERRED, False), (Action.BURY, Fate.EXHAUSTED, False)),
    (Greylisted("451 4.7.1"), (Action.RELEASE, Fate.DEFERRED, False), (Action.BURY, Fate.EXHAUSTED, False)),
    (InDoubt("no final reply"), (Action.RELEASE, Fate.IN_DOUBT, False), (Action.BURY, Fate.EXHAUSTED, False)),
    (Outage("store down"), (Action.RELEASE, Fate.DEFERRED, True), (Action.RELEASE, Fate.DEFERRED, True)),
    (Withheld("claim not confirmed", delay=5), (Action.RELEASE, Fate.DEFERRED, True),
     (Action.RELEASE, Fate.DEFERRED, True)),
    (KeyError("a bug"), (Action.BURY, Fate.POISON, False), (Action.BURY, Fate.POISON, False)),
])
def test_each_outcome_on_its_first_and_its_last_attempt(outcome: BaseException | None, first: tuple,
                                                        last: tuple) -> None:
    for attempt, expected in ((1, first), (POLICY.max_attempts, last)):
        d = disposition(outcome, attempt, POLICY)
        assert (d.action, d.outcome, d.free) == expected, (outcome, attempt, d)
    d = disposition(outcome, 1, POLICY)
    if isinstance(outcome, Greylisted):
        assert d.delay == POLICY.greylist_delay
    elif isinstance(outcome, InDoubt):
        assert d.delay == POLICY.in_doubt_delay
    elif isinstance(outcome, Deferred) and outcome.delay is None and not isinstance(outcome, Outage):
        assert 5 <= d.delay <= 10


def test_an_attempt_asked_of_beanstalkd_is_asked_only_when_a_deferral_needs_it() -> None:
    asked: list[int] = []

    def attempt() -> int:
        asked.append(1)
        return 2
    disposition(None, attempt, POLICY)
    disposition(Bounced("550"), attempt, POLICY)
    assert asked == []
    disposition(Deferred("450"), attempt, POLICY)
    assert asked == [1]
