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

import greenstalk

from producer.client import connect

from .beanstalk import CONNECTION_ERRORS, delete_many, reserve_batch
from .events import hooks as events
from .job import BatchStage, Reserved
from .logs import get_logger
from .outcomes import Action, Disposition, RetryPolicy, disposition
from .settings import Settings
from .store import Store, StoreUnavailable

EX_OK, EX_UNAVAILABLE, EX_CONFIG = 0, 69, 78
BATCH_SECONDS = 0.05  # a batch holds about this much sending at most (see Worker._batch_size)


class _Interrupted(Exception):
    pass


class Worker:
    def __init__(self, settings: Settings, stage: BatchStage, store: Store,
                 tubes: tuple[str, ...] | None = None, url: str | None = None) -> None:
        """``url``: the one beanstalkd server this loop reserves from (a fleet runs a loop per
        server); the first of the settings' servers by default."""
        self.settings = settings
        self.url = url or settings.beanstalk_urls[0]
        self.stage = stage
        self.store = store
        self.tubes = tubes or settings.tubes
        self.log = get_logger(tubes=",".join(self.tubes))
        self.client: greenstalk.Client | None = None
        self.stopping = False
        self._pending_deletes: list[int] = []
        self.batch = max(1, settings.batch)  # jobs reserved in one round trip
        self._per_job = 0.0  # seconds a job of the last batches took, smoothed
        self._idle = False
        self._reload = False
        self.processed = 0
        self.current: int | None = None  # the job in hand, for the registry's heartbeat
        self.backoff = RetryPolicy.from_settings(settings)

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
                client = connect(self.url, timeout=self.settings.reserve_timeout + self.settings.beanstalk_timeout,
                                 encoding=None, watch=list(self.tubes))
                self._idle = False
                self.log.info("connected", beanstalk=self.url)
                return client
            except _Interrupted:
                break
            except CONNECTION_ERRORS as exc:
                self._idle = False
                if burst:
                    self.log.error("beanstalkd unreachable", beanstalk=self.url, error=str(exc))
                    return None
                self.log.warning("beanstalkd unreachable, retrying", beanstalk=self.url,
                                 error=str(exc), retry_in=round(delay, 2))
                if self.in_flight:
                    self._sleep_collecting(delay)
                else:
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
        # deletes still to send are lost with the connection: beanstalkd puts those jobs back,
        # and the store's record of them as sent makes the next reservation skip them
        self._pending_deletes = []
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None

    # -- the loop -------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self.stage.in_flight

    def run(self, burst: bool = False) -> int:
        self.log.info("worker started", burst=burst)
        # a stage that keeps sends in flight says how many; one that finishes each batch takes a batch
        capacity = self.stage.capacity or self.batch
        try:
            while not (self.stopping and not self.in_flight):
                if self.client is None:
                    self.client = self._connect(burst)
                    if self.client is None:
                        if self.in_flight:  # stopping: what is in flight still ends, and is recorded
                            self._collect(0.1)
                            continue
                        return EX_OK if self.stopping else EX_UNAVAILABLE
                self._maybe_reload()
                self._record_pending()
                waiting = self.in_flight
                room = 0 if self.stopping else capacity - waiting
                jobs: list[greenstalk.Job] = []
                if room > 0:
                    try:
                        jobs = self._reserve(0 if burst or waiting else self.settings.reserve_timeout,
                                             self._batch_size(room))
                    except _Interrupted:
                        break
                    except CONNECTION_ERRORS as exc:
                        self.log.warning("beanstalkd connection lost", error=str(exc))
                        self._drop()
                        continue
                    if not jobs and not waiting:
                        if burst:
                            break
                        continue
                    self._maybe_reload()  # a SIGHUP during the reserve applies to these jobs already
                    if jobs:
                        self._process(jobs)
                elif self._pending_deletes:
                    self._flush_deletes()
                if self.in_flight:
                    # a short wait when nothing new came: the sends in flight end meanwhile
                    self._collect(0.0 if jobs else 0.05)
        finally:
            if self._pending_deletes and self.client is not None:
                self._flush_deletes()
            self._drop()
            self.stage.close()
            self.log.info("worker stopped", processed=self.processed)
        return EX_OK

    def _record_pending(self) -> None:
        """What the stage could not record during a store outage, recorded as soon as the store
        is back, before new work (other workers hold those keys back meanwhile)."""
        try:
            self.store.check()  # a store file deleted meanwhile is restored while its handle is open
            self.stage.record_pending()
        except StoreUnavailable:
            pass  # still away: logged once by the store; the next round tries again
        except Exception as exc:  # noqa: BLE001 - never ends the worker
            self.log.exception("recording pending outcomes failed", error=repr(exc))

    def _maybe_reload(self) -> None:
        if self._reload:
            self._reload = False
            self.stage.reload()
            self.log.info("templates reloaded")

    def _reserve(self, timeout: int, count: int) -> list[greenstalk.Job]:
        """Up to ``count`` jobs in one round trip, the deletes still to send riding with them."""
        assert self.client is not None
        self._idle = not self.in_flight  # a signal may end a wait only when nothing is in hand
        try:
            if self.stopping:
                raise _Interrupted()
            deletes, self._pending_deletes = self._pending_deletes, []
            return reserve_batch(self.client, deletes, timeout, count)
        finally:
            self._idle = False

    def _batch_size(self, room: int) -> int:
        """Up to BEANMAIL_BATCH jobs, and no more than about BATCH_SECONDS of sending: an urgent
        job queued meanwhile waits for the batch in hand, so a slow relay gets small batches."""
        n = min(room, self.batch)
        if self._per_job > 0 and self.stage.capacity is None:
            n = min(n, max(1, int(BATCH_SECONDS / self._per_job)))
        return n

    def _flush_deletes(self) -> None:
        deletes, self._pending_deletes = self._pending_deletes, []
        try:
            delete_many(self.client, deletes)
        except CONNECTION_ERRORS as exc:
            self.log.warning("beanstalkd connection lost", error=str(exc))
            self._drop()

    def _process(self, jobs: list[greenstalk.Job]) -> None:
        client = self.client
        assert client is not None
        batch = [Reserved(client, job, self.settings.max_attempts) for job in jobs]
        self.current = batch[0].id
        started = time.monotonic()
        try:
            done = self._handle(batch)
            per_job = (time.monotonic() - started) / len(batch)
            self._per_job = per_job if not self._per_job else 0.7 * self._per_job + 0.3 * per_job
        except CONNECTION_ERRORS as exc:
            # beanstalkd puts the jobs back when our connection closes; the store's claims keep
            # them from being sent twice
            self.log.warning("beanstalkd connection lost", error=str(exc), jobs=len(batch))
            self._drop()
            return
        finally:
            self.current = None
        self._dispose(done)

    def _handle(self, batch: list[Reserved]) -> list[tuple[Reserved, Disposition]]:
        """The stage's dispositions of the jobs it finished (a stage with sends in flight keeps
        the others until ``collect``); a stage's own failure buries with its reason."""
        try:
            return self.stage.submit(batch)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - a stage's own failure never ends the worker
            self.log.exception("stage failed", jobs=[r.id for r in batch], error=repr(exc))
            return [(r, disposition(exc, lambda r=r: r.attempt, self.backoff)) for r in batch]

    def _collect(self, wait: float) -> None:
        try:
            self._dispose(self.stage.collect(wait))
        except Exception as exc:  # noqa: BLE001 - the sends in flight go on; what ended is retried
            self.log.exception("collecting the sends in flight failed", error=repr(exc))

    def _sleep_collecting(self, seconds: float) -> None:
        """Wait, and meanwhile keep the sends in flight collected, journaled and their claims renewed."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self._collect(min(0.1, max(0.0, deadline - time.monotonic())))

    def _dispose(self, done: list[tuple[Reserved, Disposition]]) -> None:
        for reserved, d in done:
            self.processed += 1
            if d.action is Action.DELETE:
                if reserved.client is self.client:
                    self._pending_deletes.append(reserved.id)  # sent with the next reserve
                continue
            try:
                pri, tube = int(reserved.stats["pri"]), reserved.tube
                if d.action is Action.RELEASE:
                    reserved.client.release(reserved.job, priority=pri, delay=d.delay)
                else:
                    try:
                        self.store.record_failure(self.url, reserved.id, tube, d.outcome, d.reason, reserved.body)
                    except StoreUnavailable as exc:  # bury all the same: the reason is in the log
                        self.log.error("failure not recorded", job=reserved.id, reason=d.reason, error=exc.reason)
                    except Exception as exc:  # noqa: BLE001 - a body the store refuses never ends the worker
                        self.log.error("failure not recorded", job=reserved.id, reason=d.reason, error=repr(exc))
                    events.buried(self.settings, self.store, reserved.body, d.outcome, d.reason)  # message.failed
                    reserved.client.bury(reserved.job, priority=pri)
            except greenstalk.NotFoundError:
                # the TTR ran out meanwhile and someone else holds it; the store's claim decides
                self.log.warning("job vanished before its disposition", job=reserved.id)
            except CONNECTION_ERRORS as exc:
                # beanstalkd puts the job back when our connection closes; the store's claim keeps
                # it from being sent twice
                self.log.warning("beanstalkd connection lost", error=str(exc), job=reserved.id)
                if reserved.client is self.client:
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
