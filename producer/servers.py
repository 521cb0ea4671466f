"""The beanstalkd servers a Notifier puts to: one, or a fleet. beanstalkd has no replication of
its own (its maintainers advise several servers with idempotent jobs), so the producer spreads
jobs over the live servers by key, so that a retried put lands on the same server while it is
up, and fails over to the next when one does not answer; the spool is the last resort."""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from typing import Callable, Iterable, TypeVar

import greenstalk

from .beanstalk import BatchRefused, connect, put_batch, split_urls

T = TypeVar("T")
DOWN_FOR = 2.0  # seconds a server that did not answer is tried only after the others


class ServerError(Exception):
    """Base of what one server's put may raise; the Notifier maps these to its own errors."""


class Unanswered(ServerError):
    """No answer, a dropped connection, or the server refuses jobs for now (draining, full)."""


class Refused(ServerError):
    """The server refuses this job for good (larger than its max-job-size)."""

    def __init__(self, message: str, max_job_size: str) -> None:
        super().__init__(message)
        self.max_job_size = max_job_size


class Server:
    """One connection to one beanstalkd, reconnected (and the command tried once more) if dropped."""

    def __init__(self, url: str, timeout: float, connect_timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.lock = threading.Lock()
        self.down_until = 0.0
        self._client: greenstalk.Client | None = None
        self._using = "default"

    def _connection(self) -> greenstalk.Client:
        if self._client is None:
            self._client = connect(self.url, timeout=self.timeout, connect_timeout=self.connect_timeout,
                                   encoding=None)
            self._using = "default"
        return self._client

    def drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except OSError:
                pass
        self._client = None

    def put(self, tube: str, pri: int, delay: int, ttr: int, body: bytes) -> int:
        with self.lock:
            for attempt in (1, 2):
                try:
                    client = self._connection()
                    if self._using != tube:
                        client.use(tube)
                        self._using = tube
                    return client.put(body, priority=pri, delay=delay, ttr=ttr)
                except greenstalk.JobTooBigError:
                    raise Refused(f"job of {len(body)} bytes is larger than beanstalkd's max-job-size",
                                  self._max_job_size()) from None
                except (greenstalk.DrainingError, greenstalk.OutOfMemoryError) as exc:
                    raise Unanswered(f"{self.url} refuses jobs: {type(exc).__name__}") from exc
                except (OSError, greenstalk.UnknownResponseError) as exc:
                    self.drop()  # a dropped connection: one fresh try
                    if attempt == 2:
                        raise Unanswered(f"{self.url} is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    def put_batch(self, jobs: list[tuple[str, int, bytes]], ttr: int) -> list[int]:
        with self.lock:
            try:
                ids, self._using = put_batch(self._connection(), jobs, ttr, self._using)
                return ids
            except (OSError, BatchRefused) as exc:
                self.drop()  # the conversation is out of step: start afresh next time
                raise Unanswered(f"{self.url}: {exc}") from exc

    def _max_job_size(self) -> str:
        try:
            assert self._client is not None
            return str(self._client.stats()["max-job-size"])
        except Exception:  # noqa: BLE001 - only for the message
            self.drop()
            return "unknown"

    def close(self) -> None:
        with self.lock:
            self.drop()


class ServerSet:
    def __init__(self, url: str, timeout: float, connect_timeout: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = [Server(u, timeout, connect_timeout) for u in split_urls(url)]
        self.clock = clock
        self._turn = itertools.count()

    def order(self, key: str | None) -> list[Server]:
        """The servers in the order to try them: from the key's own server on, the ones that
        recently did not answer last (still tried: they may be back)."""
        n = len(self.servers)
        if n == 1:
            return self.servers
        start = zlib.crc32(key.encode()) % n if key else next(self._turn) % n
        ring = self.servers[start:] + self.servers[:start]
        now = self.clock()
        return [s for s in ring if s.down_until <= now] + [s for s in ring if s.down_until > now]

    def attempt(self, key: str | None, call: Callable[[Server], T]) -> T:
        """``call`` on each server in turn until one answers; Unanswered naming all if none did."""
        errors = []
        for server in self.order(key):
            try:
                result = call(server)
            except Unanswered as exc:
                server.down_until = self.clock() + DOWN_FOR
                errors.append(str(exc))
                continue
            server.down_until = 0.0
            return result
        raise Unanswered("; ".join(errors))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __iter__(self) -> Iterable[Server]:
        return iter(self.servers)
