"""Delivering queued events: ``beanmail events run`` reserves events from the events tube in
batches and POSTs each, signed as the Standard Webhooks specification says (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``), over kept-alive HTTP connections.

What the endpoint answers decides the event's fate: 2xx delivered (deleted); a network error,
408, 429 or 5xx retried later with backoff until the event is BEANMAIL_EVENTS_MAX_AGE old, then
buried with the last reason; any other answer (4xx, a redirect) buried at once with it. A
buried event's reason is recorded like a buried mail job's, so ``beanmail buried`` shows it.
"""

from __future__ import annotations

import glob
import http.client
import os
import random
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence
from urllib.parse import urlsplit

import greenstalk
from standardwebhooks import Webhook

from producer import __version__, spool
from producer.beanstalk import CONNECTION_ERRORS, connect, delete_many, reserve_batch

from ..logs import get_logger
from ..settings import Settings
from ..store import Store, StoreUnavailable
from .config import event_secrets, wanted_types
from .model import EventError, Queued

BATCH = 64  # events reserved in one round trip
SPOOL_EVERY = 10.0  # seconds between looks at the events spool
RETRYABLE = {408, 429}


@dataclass(frozen=True)
class Verdict:
    delivered: bool
    retry: bool = False  # False with delivered False: refused for good
    reason: str = ""
    delay: float = 0.0  # the endpoint's Retry-After, if it said
    unreachable: bool = False  # no HTTP answer at all (refused, timed out): the rest of a lane is not tried


class Endpoint:
    """One kept-alive HTTP connection to BEANMAIL_EVENTS_URL, and the signing."""

    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.events_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = settings.events_timeout
        self.signers = [Webhook(s) for s in event_secrets(settings)]
        self.conn: http.client.HTTPConnection | None = None
        self.user_agent = f"beanmail/{__version__}"

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.https:
                self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                        context=ssl.create_default_context())
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def signature(self, event_id: str, timestamp: int, body: bytes) -> str:
        when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        return " ".join(s.sign(event_id, when, body) for s in self.signers)

    def post(self, event: Queued) -> Verdict:
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": self.user_agent,
                   "webhook-id": event.id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": self.signature(event.id, timestamp, event.body)}
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more afresh
            reused = self.conn is not None
            try:
                conn = self._connection()
                conn.request("POST", self.path, body=event.body, headers=headers)
                response = conn.getresponse()
                text = response.read(2048)
                if not response.isclosed():
                    response.read(65536)  # the rest, so the connection can carry the next request
                if not response.isclosed() or response.will_close:  # a long answer, or the server's wish
                    self.close()
                return self._verdict(response.status, response.reason, text, response.getheader("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 1 and reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                                                ConnectionResetError)):
                    continue
                return Verdict(False, True, f"{self.host}:{self.port}: {type(exc).__name__}: {exc}".rstrip(": "),
                               unreachable=True)
        raise AssertionError("unreachable")

    @staticmethod
    def _verdict(status: int, reason: str, body: bytes, retry_after: str | None) -> Verdict:
        if 200 <= status < 300:
            return Verdict(True)
        said = " ".join(body.decode("utf-8", "replace").split())[:300]
        why = f"HTTP {status} {reason}" + (f": {said}" if said else "")
        if status in RETRYABLE or status >= 500:
            delay = float(retry_after) if retry_after and retry_after.strip().isdigit() else 0.0
            return Verdict(False, True, why, delay)
        return Verdict(False, False, why)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class Runner:
    """One beanstalkd server's events tube, delivered over BEANMAIL_EVENTS_CONNECTIONS connections."""

    def __init__(self, settings: Settings, url: str | None = None, store: Store | None = None) -> None:
        self.settings = settings
        self.url = url or settings.beanstalk_urls[0]
        self.store = store
        self.endpoints = [Endpoint(settings) for _ in range(settings.events_connections)]
        self.pool = ThreadPoolExecutor(len(self.endpoints), thread_name_prefix="events")
        self.wanted = wanted_types(settings)
        self.client: greenstalk.Client | None = None
        self.stopping = False
        self.log = get_logger(tube=settings.events_tube)
        self.delivered = self.retried = self.buried = 0
        self._deletes: list[int] = []
        self._spool_checked = 0.0

    # -- the loop -------------------------------------------------------------------------------
    def run(self, burst: bool = False) -> int:
        """0 when stopped (or, with ``burst``, when no event is ready); 69 when ``burst`` cannot
        reach beanstalkd."""
        delay = 0.2
        try:
            while not self.stopping:
                if self.client is None:
                    try:
                        self.client = connect(self.url, timeout=self.settings.reserve_timeout
                                              + self.settings.beanstalk_timeout, encoding=None,
                                              watch=self.settings.events_tube)
                        delay = 0.2
                    except CONNECTION_ERRORS as exc:
                        if burst:
                            self.log.error("beanstalkd unreachable", beanstalk=self.url, error=str(exc))
                            return 69
                        self.log.warning("beanstalkd unreachable, retrying", beanstalk=self.url, error=str(exc))
                        self._sleep(delay)
                        delay = min(delay * 2, 10.0)
                        continue
                try:
                    self._flush_spool()
                    jobs = reserve_batch(self.client, self._take_deletes(), 0 if burst else self.settings.reserve_timeout,
                                         BATCH)
                    if not jobs:
                        if burst:
                            return 0
                        continue
                    self._handle(jobs)
                except CONNECTION_ERRORS as exc:
                    self.log.warning("beanstalkd connection lost", error=str(exc))
                    self._drop()
                except Exception as exc:  # noqa: BLE001 - a bug never ends the runner: the batch comes back after its TTR
                    self.log.exception("events batch failed", error=repr(exc))
                    self._drop()
                    self._sleep(1.0)
            return 0
        finally:
            if self.client is not None and self._deletes:
                try:
                    delete_many(self.client, self._take_deletes())
                except CONNECTION_ERRORS:
                    pass
            self._drop()
            self.log.info("events runner stopped", delivered=self.delivered, retried=self.retried, buried=self.buried)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for e in self.endpoints:
            e.close()

    def _take_deletes(self) -> list[int]:
        deletes, self._deletes = self._deletes, []
        return deletes

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _drop(self) -> None:
        self._deletes = []  # beanstalkd gives those events out again: delivered twice at most (at least once)
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None

    def _flush_spool(self) -> None:
        """Events spooled while beanstalkd was away go onto the tube (at start, then every few seconds)."""
        path = self.settings.events_spool
        now = time.monotonic()
        if not path or now - self._spool_checked < SPOOL_EVERY:
            return
        self._spool_checked = now
        if not os.path.exists(path) and not glob.glob(f"{glob.escape(path)}.flushing-*"):
            return
        client = self.client
        assert client is not None

        def put(tube: str, pri: int, delay: int, ttr: int, body: bytes) -> None:
            client.use(tube)
            client.put(body, priority=pri, delay=delay, ttr=ttr)
        moved = spool.flush(path, put)
        if moved:
            self.log.info("spooled events moved to the events tube", events=moved, spool=path)

    # -- one batch ------------------------------------------------------------------------------
    def _handle(self, jobs: Sequence[greenstalk.Job]) -> None:
        events: list[tuple[greenstalk.Job, Queued]] = []
        for job in jobs:
            try:
                q = Queued.from_job(job.body)
            except EventError as exc:
                self._bury(job, "poison", str(exc))
                continue
            if q.type not in self.wanted:  # BEANMAIL_EVENTS_TYPES changed since it was queued
                self._deletes.append(job.id)
                continue
            events.append((job, q))
        lanes = [events[i::len(self.endpoints)] for i in range(len(self.endpoints))]
        busy = [(e, lane) for e, lane in zip(self.endpoints, lanes) if lane]
        results = self.pool.map(lambda pair: self._post_lane(pair[0], [q for _, q in pair[1]]), busy)
        for (_, lane), verdicts in zip(busy, results):
            for (job, q), verdict in zip(lane, verdicts):
                self._dispose(job, q, verdict)

    @staticmethod
    def _post_lane(endpoint: Endpoint, events: list[Queued]) -> list[Verdict]:
        """One connection's share of a batch, in order; once the endpoint cannot be reached at
        all, the rest of the share is retried later without waiting a timeout each."""
        verdicts: list[Verdict] = []
        for q in events:
            if verdicts and verdicts[-1].unreachable:
                verdicts.append(verdicts[-1])
                continue
            verdicts.append(endpoint.post(q))
        return verdicts

    def _dispose(self, job: greenstalk.Job, q: Queued, verdict: Verdict) -> None:
        if verdict.delivered:
            self.delivered += 1
            self._deletes.append(job.id)
            return
        age = time.time() - q.at
        if not verdict.retry:
            self.log.error("event refused by the endpoint; buried", event_id=q.id, type=q.type, reason=verdict.reason)
            self._bury(job, "refused", f"endpoint refused {q.type} {q.id}: {verdict.reason}")
            return
        if age >= self.settings.events_max_age:
            self.log.error("event not taken for too long; buried", event_id=q.id, type=q.type, reason=verdict.reason)
            self._bury(job, "exhausted", f"endpoint did not take {q.type} {q.id} for {age:.0f}s"
                                         f" (BEANMAIL_EVENTS_MAX_AGE {self.settings.events_max_age:g}s);"
                                         f" last: {verdict.reason}")
            return
        assert self.client is not None
        releases = int(self.client.stats_job(job)["releases"])
        delay = self._backoff(releases + 1, verdict.delay)
        delay = max(1, min(int(delay), int(self.settings.events_max_age - age) + 1))  # one try at the end
        self.client.release(job, priority=1024, delay=delay)
        self.retried += 1
        self.log.warning("event not delivered; retrying", event_id=q.id, type=q.type, reason=verdict.reason,
                         attempt=releases + 1, retry_in=delay)

    def _backoff(self, attempt: int, asked: float) -> float:
        s = self.settings
        full = min(s.events_backoff_base * 2 ** min(attempt - 1, 30), s.events_backoff_max)
        return max(min(asked, s.events_backoff_max), random.uniform(full / 2, full))

    def _bury(self, job: greenstalk.Job, outcome: str, reason: str) -> None:
        assert self.client is not None
        self.buried += 1
        try:
            if self.store is None:
                self.store = Store(self.settings.store)
            self.store.record_failure(self.url, job.id, self.settings.events_tube, outcome, reason, job.body)
        except StoreUnavailable as exc:  # buried all the same: the reason is in the log
            self.log.error("failure not recorded", job=job.id, reason=reason, error=exc.reason)
        self.client.bury(job, priority=1024)


def run(settings: Settings, burst: bool = False) -> int:
    """``beanmail events run``: a runner per beanstalkd server, until SIGTERM (or, with
    ``burst``, until no event is ready). Without BEANMAIL_EVENTS_URL it waits idle for SIGTERM
    (supervisord's program keeps running; health stays true), and ``--burst`` exits 78."""
    log = get_logger()
    stopping = threading.Event()
    runners = [Runner(settings, url) for url in settings.beanstalk_urls] if settings.events_url else []

    def stop(_signum: int, _frame: object) -> None:
        stopping.set()
        for r in runners:
            r.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not settings.events_url:
        log.warning("BEANMAIL_EVENTS_URL is not set: events are off (none queued, none delivered)")
        if burst:
            return 78
        while not stopping.wait(3600):  # supervisord's program stays up, doing nothing, until stopped
            pass
        return 0
    log.info("events runner started", url=settings.events_url, burst=burst, servers=len(runners))
    codes: list[int] = []
    threads = [threading.Thread(target=lambda r=r: codes.append(r.run(burst)), name=f"events-{i}")
               for i, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    for r in runners:
        r.close()
        if r.store is not None:
            r.store.close()
    return max(codes, default=0)
