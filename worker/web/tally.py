"""The worker's side of the console's figures: how many jobs ended how, per minute and tube, and
how long sent mail took from enqueue to the server's acceptance. Each process counts in memory
and adds its counts to the store in one statement every few seconds (and when it stops), so the
figures cover the whole pool without a store write per message."""

from __future__ import annotations

import bisect
import threading
import time

from ..logs import get_logger
from ..store import LATENCY_BUCKETS, Store, StoreCorrupt, StoreUnavailable

INTERVAL = 5.0  # seconds between writes; the console's figures lag by at most this much

_Key = tuple[int, str, str]  # minute, tube, outcome


class Tally:
    """One per store location and process, shared by its loops (BEANMAIL_THREADS)."""

    def __init__(self, location: str, interval: float = INTERVAL) -> None:
        self.location = location
        self.interval = interval
        self._counts: dict[_Key, list] = {}
        self._lock = threading.Lock()  # guards _counts: taken for a dict update on the hot path
        self._writing = threading.Lock()  # one write at a time: the flusher thread or close()
        self._store: Store | None = None
        self._thread: threading.Thread | None = None

    def record(self, tube: str, outcome: str, latency: float | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key = (int(now // 60), tube, str(outcome))
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                entry = self._counts[key] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            entry[0] += 1
            if latency is not None and latency >= 0:
                entry[1] += latency
                entry[2][bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tally", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self, store: Store | None = None) -> None:
        """Write what was counted, through ``store`` (a stopping worker's own) or the flusher's;
        on a store outage keep it for the next write."""
        with self._writing:
            with self._lock:
                counts, self._counts = self._counts, {}
            if not counts:
                return
            rows = [(m, t, o, e[0], e[1], e[2]) for (m, t, o), e in counts.items()]
            try:
                if store is None:
                    if self._store is None:
                        self._store = Store(self.location, timeout=5)
                    store = self._store
                store.add_console_counts(rows)
            except (StoreUnavailable, StoreCorrupt) as exc:
                with self._lock:
                    for key, e in counts.items():
                        mine = self._counts.setdefault(key, [0, 0.0, [0] * len(e[2])])
                        mine[0] += e[0]
                        mine[1] += e[1]
                        mine[2] = [a + b for a, b in zip(mine[2], e[2])]
                get_logger().warning("console counts not written; kept for the next try", error=str(exc))


_tallies: dict[str, Tally] = {}
_registry_lock = threading.Lock()


def tally_for(location: str) -> Tally:
    with _registry_lock:
        if location not in _tallies:
            _tallies[location] = Tally(location)
        return _tallies[location]
