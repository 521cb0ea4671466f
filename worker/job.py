"""A reserved job as a stage sees it, and the BatchStage contract the loop drives. Stages import
this, never the loop that runs them."""

from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

import greenstalk

from .beanstalk import CONNECTION_ERRORS
from .logs import get_logger
from .outcomes import Disposition, RetryPolicy, disposition


def attempt_number(stats: dict, max_attempts: int) -> int:
    """This reservation's attempt, from beanstalkd's own counters (they survive a worker crash).
    A worker that died holding the job (a TTR timeout) counts as an attempt; a job an operator
    kicks out of the buried state starts a fresh retry budget."""
    return RetryPolicy(max_attempts=max_attempts).attempt(int(stats["releases"]), int(stats["timeouts"]),
                                                          int(stats["buries"]))


class Reserved:
    """beanstalkd's job stats cost a round trip, so they are asked for only when needed: to
    count the attempts of a failure, to release or bury the job at its own priority, to learn
    its TTR when a send runs long."""

    def __init__(self, client: greenstalk.Client, job: greenstalk.Job, max_attempts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.job = job
        self.id: int = job.id
        self.body: bytes = job.body if isinstance(job.body, bytes) else job.body.encode()
        self.max_attempts = max_attempts
        self.clock = clock
        self._stats: dict[str, object] | None = None
        self._touched = clock()

    @property
    def has_stats(self) -> bool:
        return self._stats is not None

    @property
    def stats(self) -> dict[str, object]:
        if self._stats is None:
            self._stats = dict(self.client.stats_job(self.id))
        return self._stats

    @property
    def tube(self) -> str:
        return str(self.stats["tube"])

    @property
    def attempt(self) -> int:
        return attempt_number(self.stats, self.max_attempts)

    def touch(self) -> bool:
        """Called through every long step of a send; a round trip only once a third of the TTR
        is gone. True when beanstalkd's reservation was renewed."""
        elapsed = self.clock() - self._touched
        if elapsed < 1:
            return False
        try:
            if elapsed >= int(self.stats["ttr"]) / 3:
                self.client.touch(self.job)  # greenstalk wants the Job, not its id
                self._touched = self.clock()
                return True
        except (greenstalk.NotFoundError, *CONNECTION_ERRORS):
            pass
        return False


class BatchStage(Protocol):
    """A stage as the loop drives it: the sending pipeline, the event loop's flight, fan-out.

    ``submit`` takes a reserved batch and returns the dispositions of the jobs it has finished; a
    stage that keeps sends in flight keeps the others (``in_flight`` counts them) and gives them
    back from ``collect``. ``capacity`` is how many it may hold at once, None for a stage that
    finishes each batch before the next (the loop then sizes batches by their time).
    ``record_pending`` records what a store outage kept it from recording."""

    capacity: int | None

    @property
    def in_flight(self) -> int: ...

    def submit(self, jobs: Sequence[Reserved]) -> list[tuple[Reserved, Disposition]]: ...

    def collect(self, wait: float) -> list[tuple[Reserved, Disposition]]: ...

    def record_pending(self) -> None: ...

    def reload(self) -> None: ...

    def close(self) -> None: ...


class OneByOne:
    """The BatchStage of a stage that handles one job at a time (``handle``; fan-out): each job's
    failure is its own, buried or retried through the outcome table, never the batch's."""

    capacity: int | None = None
    in_flight = 0
    backoff: RetryPolicy

    def handle(self, job: Reserved) -> Disposition:
        raise NotImplementedError

    def submit(self, jobs: Sequence[Reserved]) -> list[tuple[Reserved, Disposition]]:
        done = []
        for r in jobs:
            try:
                d = self.handle(r)
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - a stage's own failure never ends the worker
                get_logger().exception("stage failed", job=r.id, error=repr(exc))
                d = disposition(exc, lambda r=r: r.attempt, self.backoff)
            done.append((r, d))
        return done

    def collect(self, wait: float) -> list[tuple[Reserved, Disposition]]:
        return []

    def record_pending(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def close(self) -> None:
        pass
