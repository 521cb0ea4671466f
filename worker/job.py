"""A reserved job as a stage sees it, and the Stage interface the loop runs. Stages import this,
never the loop that runs them."""

from __future__ import annotations

import time
from typing import Callable, Protocol

import greenstalk

from .beanstalk import CONNECTION_ERRORS
from .outcomes import Disposition


def attempt_number(stats: dict, max_attempts: int) -> int:
    """This reservation's attempt, from beanstalkd's own counters (they survive a worker crash).
    A worker that died holding the job (a TTR timeout) counts as an attempt; a job an operator
    kicks out of the buried state starts a fresh retry budget."""
    attempt = int(stats["releases"]) + int(stats["timeouts"]) + 1
    return max(1, attempt - int(stats["buries"]) * max_attempts)


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


class Stage(Protocol):
    """A pipeline stage as the loop sees it (the sending stage, the fan-out stage)."""

    def handle(self, job: Reserved) -> Disposition: ...

    def reload(self) -> None: ...

    def close(self) -> None: ...
