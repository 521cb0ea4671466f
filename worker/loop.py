"""The worker process: reserve -> stage -> delete/release/bury, until told to stop.

Exit codes (supervisord's ``exitcodes``): 0 stopped on request or ``--burst`` found nothing
ready; 69 (EX_UNAVAILABLE) ``--burst`` could not reach beanstalkd; 78 (EX_CONFIG) bad settings.
A job never ends the process; beanstalkd going away is retried with backoff, not exited on.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Protocol

import greenstalk

from producer.client import connect

from .logs import get_logger
from .outcomes import Disposition
from .settings import Settings
from .store import Store, StoreUnavailable

EX_OK, EX_UNAVAILABLE, EX_CONFIG = 0, 69, 78
CONNECTION_ERRORS = (OSError, greenstalk.UnknownResponseError, EOFError)


def delete_and_reserve(client: greenstalk.Client, job_id: int, timeout: int) -> greenstalk.Job:
    """``delete`` and ``reserve-with-timeout`` in one write, their replies read in order.
    greenstalk has no pipelining, so this speaks on its socket and reuses its reply parsing."""
    client._sock.sendall(b"delete %d\r\nreserve-with-timeout %d\r\n" % (job_id, timeout))
    deleted = client._reader.readline()
    if deleted not in (b"DELETED\r\n", b"NOT_FOUND\r\n"):  # NOT_FOUND: its TTR ran out meanwhile
        raise greenstalk.UnknownResponseError(deleted.strip(), [])
    job_id_, size = (int(n) for n in greenstalk._parse_response(client._reader.readline(), b"RESERVED"))
    return greenstalk.Job(job_id_, client._read_chunk(size))


class Reserved:
    """A reserved job as a stage sees it. beanstalkd's job stats cost a round trip, so they are
    asked for only when needed: to count the attempts of a failure, to release or bury the job
    at its own priority, to learn its TTR when a send runs long."""

    def __init__(self, client: greenstalk.Client, job: greenstalk.Job, max_attempts: int) -> None:
        self.client = client
        self.id: int = job.id
        self.body: bytes = job.body if isinstance(job.body, bytes) else job.body.encode()
        self.max_attempts = max_attempts
        self._stats: dict[str, object] | None = None
        self._touched = time.monotonic()

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

    def touch(self) -> None:
        """Called between the phases of a send; a round trip only once a third of the TTR is gone."""
        elapsed = time.monotonic() - self._touched
        if elapsed < 1:
            return
        try:
            if elapsed >= int(self.stats["ttr"]) / 3:
                self.client.touch(self.id)
                self._touched = time.monotonic()
        except (greenstalk.NotFoundError, *CONNECTION_ERRORS):
            pass


class Stage(Protocol):
    """A pipeline stage as the loop sees it (the sending stage, the fan-out stage)."""

    def handle(self, job: Reserved) -> Disposition: ...

    def reload(self) -> None: ...

    def close(self) -> None: ...


class _Interrupted(Exception):
    pass


def attempt_number(stats: dict, max_attempts: int) -> int:
    """This reservation's attempt, from beanstalkd's own counters (they survive a worker crash).
    A worker that died holding the job (a TTR timeout) counts as an attempt; a job an operator
    kicks out of the buried state starts a fresh retry budget."""
    attempt = int(stats["releases"]) + int(stats["timeouts"]) + 1
    return max(1, attempt - int(stats["buries"]) * max_attempts)


class Worker:
    def __init__(self, settings: Settings, stage: Stage, store: Store,
                 tubes: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.stage = stage
        self.store = store
        self.tubes = tubes or settings.tubes
        self.log = get_logger(tubes=",".join(self.tubes))
        self.client: greenstalk.Client | None = None
        self.stopping = False
        self._pending_delete: int | None = None
        self._idle = False
        self._reload = False
        self.processed = 0

    # -- signals --------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self._idle:  # blocked in reserve: nothing held, stop now rather than after the timeout
            raise _Interrupted()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self._reload = True

    # -- beanstalkd connection ------------------------------------------------------------------
    def _connect(self, burst: bool) -> greenstalk.Client | None:
        delay = 0.1
        while not self.stopping:
            try:
                self._idle = True
                client = connect(self.settings.beanstalk_url, timeout=self.settings.reserve_timeout + self.settings.beanstalk_timeout,
                                 encoding=None, watch=list(self.tubes))
                self._idle = False
                self.log.info("connected", beanstalk=self.settings.beanstalk_url)
                return client
            except _Interrupted:
                break
            except CONNECTION_ERRORS as exc:
                self._idle = False
                if burst:
                    self.log.error("beanstalkd unreachable", beanstalk=self.settings.beanstalk_url, error=str(exc))
                    return None
                self.log.warning("beanstalkd unreachable, retrying", beanstalk=self.settings.beanstalk_url,
                                 error=str(exc), retry_in=round(delay, 2))
                self._sleep(delay)
                delay = min(delay * 2, 10.0) * random.uniform(0.8, 1.2)
        return None

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            self._idle = True
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, deadline - time.monotonic()))
        except _Interrupted:
            pass
        finally:
            self._idle = False

    def _drop(self) -> None:
        # a delete still to send is lost with the connection: beanstalkd puts the job back, and
        # the store's record of it as sent makes the next reservation skip it
        self._pending_delete = None
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None

    # -- the loop -------------------------------------------------------------------------------
    def run(self, burst: bool = False) -> int:
        self.log.info("worker started", burst=burst)
        try:
            while not self.stopping:
                if self.client is None:
                    self.client = self._connect(burst)
                    if self.client is None:
                        return EX_OK if self.stopping else EX_UNAVAILABLE
                self._maybe_reload()
                try:
                    job = self._reserve(0 if burst else self.settings.reserve_timeout)
                except greenstalk.TimedOutError:
                    if burst:
                        break
                    continue
                except _Interrupted:
                    break
                except (greenstalk.DeadlineSoonError,):
                    continue
                except CONNECTION_ERRORS as exc:
                    self.log.warning("beanstalkd connection lost", error=str(exc))
                    self._drop()
                    continue
                self._maybe_reload()  # a SIGHUP during the reserve applies to this job already
                self._process(job)
        finally:
            if self._pending_delete is not None and self.client is not None:
                try:
                    self.client.delete(self._pending_delete)
                except (greenstalk.NotFoundError, *CONNECTION_ERRORS):
                    pass
            self._drop()
            self.stage.close()
            self.log.info("worker stopped", processed=self.processed)
        return EX_OK

    def _maybe_reload(self) -> None:
        if self._reload:
            self._reload = False
            self.stage.reload()
            self.log.info("templates reloaded")

    def _reserve(self, timeout: int) -> greenstalk.Job:
        assert self.client is not None
        self._idle = True
        try:
            if self.stopping:
                raise _Interrupted()
            if self._pending_delete is None:
                return self.client.reserve(timeout=timeout)
            job_id, self._pending_delete = self._pending_delete, None
            return delete_and_reserve(self.client, job_id, timeout)
        finally:
            self._idle = False

    def _process(self, job: greenstalk.Job) -> None:
        client = self.client
        assert client is not None
        reserved = Reserved(client, job, self.settings.max_attempts)
        try:
            try:
                d = self.stage.handle(reserved)
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - a stage's own failure never ends the worker
                self.log.exception("stage failed; job released", job=job.id, error=repr(exc))
                d = Disposition("release", "deferred", f"stage failed: {exc!r}", int(self.settings.backoff_base))
            self.processed += 1
            if d.action == "delete":
                self._pending_delete = job.id  # sent with the next reserve: one round trip less
                return
            pri, tube = int(reserved.stats["pri"]), reserved.tube
            if d.action == "release":
                client.release(job, priority=pri, delay=d.delay)
            else:
                try:
                    self.store.record_failure(self.settings.beanstalk_url, job.id, tube, d.outcome, d.reason,
                                              reserved.body)
                except StoreUnavailable as exc:  # bury all the same: the reason is in the log
                    self.log.error("failure not recorded", job=job.id, reason=d.reason, error=exc.reason)
                client.bury(job, priority=pri)
        except greenstalk.NotFoundError:
            # the TTR ran out meanwhile and someone else holds it; the store's claim decides
            self.log.warning("job vanished before its disposition", job=job.id)
        except CONNECTION_ERRORS as exc:
            # beanstalkd puts the job back when our connection closes; the store's claim keeps it
            # from being sent twice
            self.log.warning("beanstalkd connection lost", error=str(exc), job=job.id)
            self._drop()


class Pool:
    """Several loops in one process, each with its own beanstalkd connection, stage and store:
    for slow receivers, where a loop spends its time waiting on the network, not the CPU."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, _signum: int, _frame: object) -> None:
        for w in self.workers:
            w.stopping = True  # each notices within its reserve timeout

    def _on_hup(self, _signum: int, _frame: object) -> None:
        for w in self.workers:
            w._reload = True

    def run(self, burst: bool = False) -> int:
        codes: list[int] = []
        threads = [threading.Thread(target=lambda w=w: codes.append(w.run(burst)), name=f"loop-{i}")
                   for i, w in enumerate(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # the main thread stays free to take signals
        return max(codes, default=EX_OK)
