"""Every job's fate is decided here, and only here (the table is in docs/outcomes.md): stages
raise, ``disposition`` maps what they raised to one action on beanstalkd and one recorded outcome.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable


class Action(StrEnum):
    DELETE = "delete"
    RELEASE = "release"
    BURY = "bury"


class Fate(StrEnum):
    """What the delivery log records. StrEnum: stored and compared as plain text."""

    SENT = "sent"
    SKIPPED = "skipped"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    IN_DOUBT = "in_doubt"
    EXHAUSTED = "exhausted"
    POISON = "poison"


class Outcome(Exception):
    """Base of every expected end of a job other than "sent"; ``reason`` is what gets recorded."""

    name = "outcome"

    def __init__(self, reason: str, *, reply: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class Skipped(Outcome):
    """Nothing to send: suppressed, expired, entity gone, duplicate key."""

    name = Fate.SKIPPED


class Bounced(Outcome):
    """Permanent refusal for the recipient; ``hard`` bounces suppress the address."""

    name = Fate.BOUNCED

    def __init__(self, reason: str, *, reply: str = "", hard: bool = True) -> None:
        super().__init__(reason, reply=reply)
        self.hard = hard


class Deferred(Outcome):
    """Worth retrying later. ``delay`` overrides the backoff: such a deferral (a rate limit's
    booked slot, a claim another live worker holds) is no failure and costs no retry."""

    name = Fate.DEFERRED

    def __init__(self, reason: str, *, reply: str = "", delay: int | None = None) -> None:
        super().__init__(reason, reply=reply)
        self.delay = delay


class Wait(Deferred):
    """Later, at a time of its own, and no failure: a connection or a claim busy elsewhere, a
    booked rate slot, quiet hours, a paced relay. Released after ``delay`` seconds (at least 1);
    costs no attempt, so however often it waits the job is never exhausted by it."""

    def __init__(self, reason: str, delay: float, *, reply: str = "") -> None:
        super().__init__(reason, reply=reply, delay=max(1, math.ceil(delay)))


class Outage(Deferred):
    """The store, DNS, the relay or the journal is down: nothing is wrong with the job. Released
    with the backoff, but never counted against the retry budget (an outage is waited out,
    never spent), and never exhausted."""


class Greylisted(Deferred):
    """A receiver's greylisting (451 4.7.1 "greylisted, try again later"): it takes the same
    message from the same sender once a few minutes have passed. Retried after
    BEANMAIL_GREYLIST_DELAY, not the exponential backoff; it counts as an attempt, so a host that
    greylists for ever still ends exhausted."""


class Withheld(Deferred):
    """The worker stopped a message just before the end of its data: its claim was no longer its
    own (another worker took the key over while it stalled), or its journal could not record the
    send. Nothing went; released at once, no retry spent."""

    def __init__(self, reason: str, *, delay: int = 1) -> None:
        super().__init__(reason, delay=delay)


class InDoubt(Outcome):
    """The message went out but its final reply never came: the server may have taken it.
    Retried only after a long delay (``BEANMAIL_IN_DOUBT_DELAY``), so a slow server gets at most
    one more copy, never one per retry."""

    name = Fate.IN_DOUBT


class Poison(Outcome):
    """The job itself is wrong; retrying cannot help, a person must look."""

    name = Fate.POISON


@dataclass(frozen=True)
class RetryPolicy:
    """Every retry's timing, built once from the settings (``from_settings``): the exponential
    backoff of a failure, how many attempts a job has, the hold of a message in doubt, the wait
    after greylisting, and the short waits that are no failure (``Wait``: a slot busy elsewhere,
    a claim not yet confirmed, the journal down). No delay is written anywhere else."""
    base: float = 30.0
    cap: float = 3600.0
    max_attempts: int = 8
    in_doubt_delay: int = 3600
    greylist_delay: int = 300
    busy: int = 1  # a connection, slot or claim held elsewhere this instant
    unconfirmed: int = 5  # the store could not confirm our claim just before the end of data
    journal_down: int = 30  # the journal cannot record a send: nothing goes until it can

    @classmethod
    def from_settings(cls, settings: Any) -> "RetryPolicy":
        return cls(settings.backoff_base, settings.backoff_max, settings.max_attempts,
                   int(settings.in_doubt_delay), int(settings.greylist_delay))

    def delay(self, attempt: int, rng: random.Random | None = None) -> int:
        """Exponential with jitter: uniform in [d/2, d], d = base * 2**(attempt-1), capped."""
        d = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return max(1, round((rng or random).uniform(d / 2, d)))

    def attempt(self, releases: int, timeouts: int, buries: int, free: int = 0) -> int:
        """This reservation's attempt, from beanstalkd's counters (they survive a worker crash):
        a release or a TTR timeout counts, a release that was a ``Wait`` (``free``, counted by the
        store) does not, and a job an operator kicked from the buried state starts afresh."""
        return self.less_waits(releases + timeouts + 1 - buries * self.max_attempts, free)

    @staticmethod
    def less_waits(attempt: int, free: int) -> int:
        """An attempt without the releases that were waits (never below the first)."""
        return max(1, attempt - free)


Backoff = RetryPolicy  # its name before it held every delay


@dataclass(frozen=True)
class Disposition:
    action: Action
    outcome: Fate
    reason: str = ""
    delay: int = 0
    free: bool = False  # a release with a delay of its own: costs no retry


def disposition(exc: BaseException | None, attempt: int | Callable[[], int], backoff: Backoff) -> Disposition:
    """``attempt`` counts from 1 (this reservation); a callable is asked only when a deferral
    needs it (it costs a round trip to beanstalkd). Any unexpected exception is poison: a bug
    must bury the job with its reason recorded, never crash the worker or loop."""
    if exc is None:
        return Disposition(Action.DELETE, Fate.SENT)
    if isinstance(exc, (Skipped, Bounced)):
        return Disposition(Action.DELETE, Fate(exc.name), exc.reason)
    if isinstance(exc, Outage) and exc.delay is None:
        if callable(attempt):
            attempt = attempt()
        return Disposition(Action.RELEASE, Fate.DEFERRED, exc.reason, backoff.delay(attempt), free=True)
    if isinstance(exc, Greylisted):
        if callable(attempt):
            attempt = attempt()
        if attempt >= backoff.max_attempts:
            return Disposition(Action.BURY, Fate.EXHAUSTED, f"{attempt} attempts: {exc.reason}")
        return Disposition(Action.RELEASE, Fate.DEFERRED, exc.reason, backoff.greylist_delay)
    if isinstance(exc, Deferred):
        if exc.delay is not None:
            return Disposition(Action.RELEASE, Fate.DEFERRED, exc.reason, exc.delay, free=True)
        if callable(attempt):
            attempt = attempt()
        if attempt >= backoff.max_attempts:
            return Disposition(Action.BURY, Fate.EXHAUSTED, f"{attempt} attempts: {exc.reason}")
        return Disposition(Action.RELEASE, Fate.DEFERRED, exc.reason, backoff.delay(attempt))
    if isinstance(exc, InDoubt):
        if callable(attempt):
            attempt = attempt()
        if attempt >= backoff.max_attempts:
            return Disposition(Action.BURY, Fate.EXHAUSTED, f"{attempt} attempts: {exc.reason}")
        return Disposition(Action.RELEASE, Fate.IN_DOUBT, exc.reason, backoff.in_doubt_delay)
    if isinstance(exc, Poison):
        return Disposition(Action.BURY, Fate.POISON, exc.reason)
    return Disposition(Action.BURY, Fate.POISON, f"bug: {type(exc).__name__}: {exc}")
