"""The outcome table of DESIGN.md in code: stages raise, and only this module decides a job's fate."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


class Outcome(Exception):
    """Base of every expected end of a job other than "sent"; ``reason`` is what gets recorded."""

    name = "outcome"

    def __init__(self, reason: str, *, reply: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class Skipped(Outcome):
    """Nothing to send: suppressed, expired, entity gone, duplicate key."""

    name = "skipped"


class Bounced(Outcome):
    """Permanent refusal for the recipient; ``hard`` bounces suppress the address."""

    name = "bounced"

    def __init__(self, reason: str, *, reply: str = "", hard: bool = True) -> None:
        super().__init__(reason, reply=reply)
        self.hard = hard


class Deferred(Outcome):
    """Worth retrying later; ``delay`` overrides the backoff (e.g. a rate limit's next slot)."""

    name = "deferred"

    def __init__(self, reason: str, *, reply: str = "", delay: int | None = None) -> None:
        super().__init__(reason, reply=reply)
        self.delay = delay


class Poison(Outcome):
    """The job itself is wrong; retrying cannot help, a person must look."""

    name = "poison"


@dataclass(frozen=True)
class Backoff:
    base: float = 30.0
    cap: float = 3600.0
    max_attempts: int = 8

    def delay(self, attempt: int, rng: random.Random | None = None) -> int:
        """Exponential with jitter: uniform in [d/2, d], d = base * 2**(attempt-1), capped."""
        d = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return max(1, round((rng or random).uniform(d / 2, d)))


@dataclass(frozen=True)
class Disposition:
    action: str  # "delete" | "release" | "bury"
    outcome: str  # sent | skipped | bounced | deferred | exhausted | poison
    reason: str = ""
    delay: int = 0


def disposition(exc: BaseException | None, attempt: int | Callable[[], int], backoff: Backoff) -> Disposition:
    """``attempt`` counts from 1 (this reservation); a callable is asked only when a deferral
    needs it (it costs a round trip to beanstalkd). Any unexpected exception is poison: a bug
    must bury the job with its reason recorded, never crash the worker or loop."""
    if exc is None:
        return Disposition("delete", "sent")
    if isinstance(exc, (Skipped, Bounced)):
        return Disposition("delete", exc.name, exc.reason)
    if isinstance(exc, Deferred):
        if exc.delay is not None:
            return Disposition("release", "deferred", exc.reason, exc.delay)
        if callable(attempt):
            attempt = attempt()
        if attempt >= backoff.max_attempts:
            return Disposition("bury", "exhausted", f"{attempt} attempts: {exc.reason}")
        return Disposition("release", "deferred", exc.reason, backoff.delay(attempt))
    if isinstance(exc, Poison):
        return Disposition("bury", "poison", exc.reason)
    return Disposition("bury", "poison", f"bug: {type(exc).__name__}: {exc}")
