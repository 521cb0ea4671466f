"""Deliveries in flight: BEANMAIL_CONCURRENCY sends at once through the relay, on one event loop.

The loop's thread does what needs the CPU or the store (decode, check, claim, render, record),
in batches as the sending stage does; each claimed message is handed to an asyncio event loop
in one helper thread, where the relay sessions wait for their servers side by side. The loop
reserves more while sends are in flight (never more than the concurrency), collects the sends
that ended, records them in one transaction, and through it all keeps every job in flight
reserved and every claim renewed. 250 slow sessions cost one thread, not 250.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Sequence

from .job import Reserved
from .outcomes import Disposition
from .delivery import Delivery
from .pipeline import Pipeline
from .settings import Settings
from .store import Store
from .relays.transport import FailoverPool
from .transports.aio import RelayPool
from .transports.aio_mx import MxPool


class Sessions:
    """One asyncio event loop in a helper thread and the pool whose sessions wait on it: a
    Flight's own, or one a process's server loops share (direct MX with several beanstalkd
    servers: one pool, so the per-domain cap holds for the whole process)."""

    def __init__(self, pool: "RelayPool | MxPool | FailoverPool") -> None:
        self.pool = pool
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sessions", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.pool.close(), self.loop).result(timeout)
        except Exception:  # noqa: BLE001 - closing: a server that does not answer QUIT is let go
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Flight:
    def __init__(self, settings: Settings, pipeline: Pipeline, capacity: int,
                 pool: RelayPool | MxPool | FailoverPool | None = None, shared: Sessions | None = None) -> None:
        """``pool``: where the sends go (anything with ``async send(sender, recipients, message)``
        and ``async close()``); the relay's sessions by default. ``shared``: a loop and pool other
        flights use too (closed by whoever made it, not here)."""
        self.settings = settings
        self.pipeline = pipeline
        self.capacity = capacity
        self._shared = shared
        # the relays of each priority, in order (worker/relays): the pipeline's book, so what the
        # sends learn (a relay down, its pace) is what the bulk admission sees
        self._sessions = shared or Sessions(pool or FailoverPool(settings, getattr(pipeline, "relays", None)))
        self.pool = self._sessions.pool
        self._loop = self._sessions.loop
        self._done: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._flying: dict[int, Delivery] = {}
        self._followers: dict[int, list[Delivery]] = {}  # copies of a key in flight, by the flying one
        # every job in flight stays reserved and its claim renewed, however long its server takes
        self._keep = pipeline.keeper(lambda: [d.envelope.id for d in self._flying.values() if d.envelope is not None],
                                     self._touch)

    @property
    def in_flight(self) -> int:
        return len(self._flying) + sum(len(f) for f in self._followers.values())

    # -- the loop's side ------------------------------------------------------------------------
    def submit(self, jobs: Sequence[Reserved]) -> list[tuple[Reserved, Disposition]]:
        """Take a batch: what cannot go (a duplicate, poison, a deferral) ends now, the rest flies."""
        batch = self.pipeline.begin(jobs)
        for d in batch:
            if d.ready:
                self._flying[id(d)] = d
                asyncio.run_coroutine_threadsafe(self._send(d), self._loop)
        waiting = []
        for d in batch:
            if d.ready or id(d) in self._flying:
                continue
            if d.error is None and d.leader is not None and id(d.leader) in self._flying:
                self._followers.setdefault(id(d.leader), []).append(d)  # ends when the flying copy does
            else:
                waiting.append(d)
        return self._end(waiting)

    def collect(self, wait: float) -> list[tuple[Reserved, Disposition]]:
        """The sends that ended (waiting up to ``wait`` seconds for the first), recorded."""
        ended = []
        try:
            ended.append(self._done.get(timeout=wait) if wait > 0 else self._done.get_nowait())
            while True:
                ended.append(self._done.get_nowait())
        except queue.Empty:
            pass
        for d in list(ended):
            del self._flying[id(d)]
            self.pipeline.sent(d, journal=False)
            ended += self._followers.pop(id(d), [])
        self._keep()
        return self._end(ended)

    def _end(self, batch: list[Delivery]) -> list[tuple[Reserved, Disposition]]:
        if not batch:
            return []
        return [(d.job, disp) for d, disp in zip(batch, self.pipeline.end(batch)) if d.job is not None]

    def _touch(self) -> None:
        for d in self._flying.values():
            d.touch()  # at a third of each job's TTR
        for copies in self._followers.values():
            for d in copies:
                d.touch()

    # -- the event loop's side ------------------------------------------------------------------
    async def _send(self, d: Delivery) -> None:
        try:
            route = getattr(self.pool, "route", None)
            pool = route(d.envelope.priority) if route is not None and d.envelope is not None else self.pool
            d.reply = str(await pool.send(d.sender, d.recipients, d.message,
                                          before_end=self.pipeline.gate(d, may_ask_store=False)))
            if d.envelope is not None:  # journaled at the reply, not when the loop's thread collects it
                self.pipeline.store.journal.sent(d.envelope.id)
        except Exception as exc:  # noqa: BLE001 - classified by the pipeline when recorded
            d.error = exc
        self._done.put(d)

    # -- the BatchStage contract (worker/job.py): submit, collect, in_flight, capacity -----------
    def handle(self, job: Reserved) -> Disposition:  # the loop uses submit/collect; for completeness
        done = self.submit([job])
        while not done:
            done = self.collect(0.1)
        return done[0][1]

    def reload(self) -> None:
        self.pipeline.reload()

    def record_pending(self) -> None:
        self.pipeline.record_pending()

    def close(self) -> None:
        if self._shared is None:
            self._sessions.close(self.settings.smtp_timeout)
        self.pipeline.close()


def sending_stage(settings: Settings, store: Store, transport: object = None,
                  shared: Sessions | None = None) -> Pipeline | Flight:
    """The stage a `beanmail worker` loop runs: the blocking pipeline, or with BEANMAIL_CONCURRENCY
    above 1 the pipeline with its sends in flight on the event loop, through the relay or straight
    to each domain's MX hosts (a queue per domain); ``shared``: the process's one direct-MX pool
    and its loop when several servers' loops send (``shared_sessions``)."""
    pipeline = Pipeline(settings, store, transport=transport)  # type: ignore[arg-type]
    if flies(settings):
        pool = MxPool.from_settings(settings) if settings.transport == "mx" and shared is None else None
        return Flight(settings, pipeline, settings.in_flight, pool, shared=shared)
    return pipeline


def shared_sessions(settings: Settings) -> Sessions | None:
    """Direct MX from several beanstalkd servers: one pool on one loop for all their flights, so
    a domain's connection cap holds for the whole process. None otherwise (each flight its own)."""
    if flies(settings) and settings.transport == "mx" and len(settings.beanstalk_urls) > 1:
        return Sessions(MxPool.from_settings(settings))
    return None


def flies(settings: Settings) -> bool:
    """Whether sends fly on the event loop: BEANMAIL_CONCURRENCY above 1, through a relay or
    straight to MX hosts, from any number of beanstalkd servers. At 1 the blocking pipeline sends
    (a fast local relay's CPU is the limit, and one session a process is the fastest)."""
    return settings.in_flight > 1

