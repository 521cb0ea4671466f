"""The worker registry: every worker process registers in the delivery store and beats a heart,
so an operator sees the fleet (`beanmail workers`) and can disable a host from anywhere.

A disabled worker finishes the job in hand and exits 0, which supervisord.conf treats as
expected (autorestart=unexpected): it stays down until `beanmail workers enable`. A worker whose
heart stopped (a host that died) is marked lost by the others after BEANMAIL_LOST_AFTER, and the
claims it held are released at once rather than when their leases run out.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from producer import __version__ as VERSION

from .identity import host_name, process_id
from .logs import get_logger
from .store import Store, StoreUnavailable


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    tubes: str
    version: str
    state: str  # running | disabled | stopped | lost
    started_at: float
    last_seen: float
    jobs_done: int
    current_job: str

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def this_worker() -> tuple[str, str, int]:
    """(``host:pid:instance``, host, pid): the id is this run's (worker/identity.py), so two
    containers' pid 1 and a restarted worker never share a row or each other's claims."""
    host, pid = host_name(), os.getpid()
    return process_id(), host, pid


class Registry:
    """One per worker process. ``progress`` tells the heartbeat (jobs done, jobs in hand);
    ``stop`` is called once when this host or process is disabled."""

    def __init__(self, store: Store, tubes: tuple[str, ...], *, heartbeat: float, lost_after: float,
                 progress: Callable[[], tuple[int, str]] = lambda: (0, ""),
                 stop: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.tubes = ",".join(tubes)
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self.progress = progress
        self.stop = stop
        self.id, self.host, self.pid = this_worker()
        self.disabled = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = get_logger()

    # -- this process ---------------------------------------------------------------------------
    def start(self) -> "Registry":
        self.store.workers.register(self.id, self.host, self.pid, self.tubes, VERSION, time.time())
        if self._thread is None:  # a start retried after a store outage beats with one thread
            self._thread = threading.Thread(target=self._beat, name="registry", daemon=True)
            self._thread.start()
        return self

    def is_disabled(self) -> bool:
        return self.store.workers.is_disabled(self.host, f"{self.host}:{self.pid}", self.id)

    def beat(self) -> None:
        """One heartbeat: say we live, notice a disable, mark the silent lost."""
        done, current = self.progress()
        state = "disabled" if self.disabled else "running"
        self.store.workers.beat(self.id, state, done, current)
        if not self.disabled and self.is_disabled():
            self.disabled = True
            self.store.workers.set_state(self.id, "disabled")
            self.log.warning("this worker is disabled: finishing the job in hand, then exiting", worker=self.id)
            self.stop()
        for worker in mark_lost(self.store, self.lost_after):
            self.log.warning("worker lost: no heartbeat; its claims are released", worker=worker)

    def _beat(self) -> None:
        while not self._done.wait(self.heartbeat):
            try:
                self.beat()
            except StoreUnavailable:
                pass  # the store logs its outage once; the next beat tries again

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(5)
        done, _ = self.progress()
        try:
            still = self.disabled and self.is_disabled()  # (enabled meanwhile: it simply stopped)
            self.store.workers.beat(self.id, "disabled" if still else "stopped", done, "")
        except StoreUnavailable:
            pass


# -- the fleet, for operators ---------------------------------------------------------------------

PRUNE_AFTER = 86400.0  # a stopped or lost worker's row is kept this long after it was last seen


def prune(store: Store, older_than: float = PRUNE_AFTER) -> int:
    """Stopped and lost workers' rows last seen more than ``older_than`` seconds ago go: a dev
    stack restarted three times shows its live workers, not twelve rows. How many went."""
    return store.workers.prune(time.time() - older_than)


def mark_lost(store: Store, lost_after: float) -> list[str]:
    """Workers silent for ``lost_after`` seconds are lost; their claims are released at once.
    A disabled worker with no job in hand is not: it exited as it was told to (its last word
    cleared the job), or is about to, and holds nothing to release."""
    lost = store.workers.mark_lost(time.time() - lost_after)
    for worker in lost:
        store.ledger.release_claims_of(worker)
    prune(store)
    return lost


def workers(store: Store, lost_after: float) -> list[WorkerRow]:
    mark_lost(store, lost_after)
    return [WorkerRow(*r) for r in store.workers.rows()]


def disable(store: Store, target: str) -> None:
    """``target``: a host name (all its workers), ``host:pid`` or a worker id (one process)."""
    store.workers.disable(target)


def enable(store: Store, target: str) -> bool:
    """Lifts a disable; the rows of the workers it had stopped say "stopped", no longer
    "disabled" (a running one says "running" again at its next heartbeat)."""
    return store.workers.enable(target)


def disabled_targets(store: Store) -> list[str]:
    return store.workers.disabled_targets()
