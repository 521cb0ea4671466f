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
from . import subjects

INTERVAL = 5.0  # seconds between writes; the console's figures lag by at most this much
TOP_DOMAINS = 50  # recipient domains kept by name per minute and write; the rest count as "(other)"
KEEP_DOMAIN_MINUTES = 2 * 24 * 60  # per-domain counts older than this are dropped (the console shows 24 h)
MAX_PENDING_SUBJECTS = 100_000  # subjects kept through a store outage; beyond, the log goes without them

_Key = tuple[int, str, str]  # minute, tube, outcome


class Tally:
    """One per store location and process, shared by its loops (BEANMAIL_THREADS)."""

    def __init__(self, location: str, interval: float = INTERVAL) -> None:
        self.location = location
        self.interval = interval
        self._counts: dict[_Key, list] = {}
        self._domains: dict[_Key, int] = {}  # (minute, domain, outcome) -> messages
        self._subjects: dict[str, str] = {}  # key -> the Subject of the message built for it
        self._pruned = 0.0
        self._lock = threading.Lock()  # guards _counts: taken for a dict update on the hot path
        self._writing = threading.Lock()  # one write at a time: the flusher thread or close()
        self._store: Store | None = None
        self._thread: threading.Thread | None = None

    def record(self, tube: str, outcome: str, latency: float | None = None, domain: str | None = None,
               now: float | None = None, subject: tuple[str, str] | None = None) -> None:
        """``subject``: (key, raw Subject) of the message built for the job, for the log."""
        now = time.time() if now is None else now
        key = (int(now // 60), tube, str(outcome))
        with self._lock:
            if subject is not None and subject[1] and len(self._subjects) < MAX_PENDING_SUBJECTS:
                self._subjects[subject[0]] = subject[1]
            if domain:
                dkey = (key[0], domain, key[2])
                self._domains[dkey] = self._domains.get(dkey, 0) + 1
            entry = self._counts.get(key)
            if entry is None:
                entry = self._counts[key] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1), 0.0]
            entry[0] += 1
            if latency is not None and latency >= 0:
                entry[1] += latency
                entry[3] = max(entry[3], latency)
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
                domains, self._domains = self._domains, {}
                titled, self._subjects = self._subjects, {}
            if not counts and not domains and not titled:
                return
            rows = [(m, t, o, e[0], e[1], e[3], e[2]) for (m, t, o), e in counts.items()]
            prune = 0
            if time.time() - self._pruned > 3600:
                prune = int(time.time() // 60) - KEEP_DOMAIN_MINUTES
            try:
                if store is None:
                    if self._store is None:
                        self._store = Store(self.location, timeout=5)
                    store = self._store
                store.add_console_counts(rows, _busiest(domains), prune)
                counts, domains = {}, {}  # written: an outage of what follows keeps only the subjects
                try:
                    subjects.write(store, titled, prune=bool(prune))
                except (StoreUnavailable, StoreCorrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - the log's labels never stop the counts
                    get_logger().warning("message subjects not recorded", error=repr(exc), messages=len(titled))
                if prune:
                    self._pruned = time.time()
            except (StoreUnavailable, StoreCorrupt) as exc:
                with self._lock:
                    for k, v in titled.items():
                        if len(self._subjects) < MAX_PENDING_SUBJECTS:
                            self._subjects.setdefault(k, v)
                    for dkey, n in domains.items():
                        self._domains[dkey] = self._domains.get(dkey, 0) + n
                    for key, e in counts.items():
                        mine = self._counts.setdefault(key, [0, 0.0, [0] * len(e[2]), 0.0])
                        mine[0] += e[0]
                        mine[1] += e[1]
                        mine[2] = [a + b for a, b in zip(mine[2], e[2])]
                        mine[3] = max(mine[3], e[3])
                get_logger().warning("console counts not written; kept for the next try", error=str(exc))


def _busiest(domains: dict[_Key, int]) -> list[tuple[int, str, str, int]]:
    """Per minute, the TOP_DOMAINS busiest domains by name and the rest together as "(other)":
    a mailout's long tail of domains stays a bounded number of rows."""
    per_minute: dict[int, dict[str, int]] = {}
    for (minute, domain, _), n in domains.items():
        totals = per_minute.setdefault(minute, {})
        totals[domain] = totals.get(domain, 0) + n
    keep = {m: set(sorted(t, key=t.__getitem__, reverse=True)[:TOP_DOMAINS]) for m, t in per_minute.items()}
    rows: dict[_Key, int] = {}
    for (minute, domain, outcome), n in domains.items():
        key = (minute, domain if domain in keep[minute] else "(other)", outcome)
        rows[key] = rows.get(key, 0) + n
    return [(m, d, o, n) for (m, d, o), n in rows.items()]


_tallies: dict[str, Tally] = {}
_registry_lock = threading.Lock()


def tally_for(location: str) -> Tally:
    with _registry_lock:
        if location not in _tallies:
            _tallies[location] = Tally(location)
        return _tallies[location]
