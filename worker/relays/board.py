"""Each worker process's view of its relays, written to the store every few seconds (and read by
`beanmail status` and the console's /metrics): one row per process and relay, in a table of its
own, created on first use over the store's own connection and outage handling.

A process silent for BEANMAIL_LOST_AFTER no longer counts. Across processes a relay is up when
every process that spoke of it lately finds it up; its bulk pace is the sum of theirs (the fleet's
rate into it); its queue is the latest reading.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from ..settings import Settings
from ..identity import process_id
from ..store import Store, StoreCorrupt, StoreUnavailable

if TYPE_CHECKING:
    from .book import RelayBook

INTERVAL = 5.0  # seconds between a process's writes

_TABLE = ("CREATE TABLE IF NOT EXISTS relay_state (process TEXT NOT NULL, relay TEXT NOT NULL,"
          " priorities TEXT NOT NULL, up INTEGER NOT NULL, skipped_until DOUBLE PRECISION NOT NULL,"
          " reason TEXT NOT NULL, pace DOUBLE PRECISION NOT NULL, sent_rate DOUBLE PRECISION NOT NULL,"
          " queue INTEGER NOT NULL, queue_error TEXT NOT NULL, held TEXT NOT NULL,"
          " updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (process, relay))")
_COLUMNS = ("relay", "priorities", "up", "skipped_until", "reason", "pace", "sent_rate", "queue", "queue_error",
            "held", "updated_at")


def ensure_table(store: Store) -> None:
    store._run(_TABLE)


def write(store: Store, views: list[dict[str, Any]], process: str | None = None, now: float | None = None) -> None:
    ensure_table(store)
    process = process or process_id()
    now = time.time() if now is None else now
    with store._transaction():
        for v in views:
            store._db.execute(
                "INSERT INTO relay_state (process, relay, priorities, up, skipped_until, reason, pace, sent_rate,"
                " queue, queue_error, held, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (process, relay) DO UPDATE SET priorities = excluded.priorities, up = excluded.up,"
                " skipped_until = excluded.skipped_until, reason = excluded.reason, pace = excluded.pace,"
                " sent_rate = excluded.sent_rate, queue = excluded.queue, queue_error = excluded.queue_error,"
                " held = excluded.held, updated_at = excluded.updated_at",
                (process, v["relay"], v["priorities"], int(bool(v["up"])), float(v["skipped_until"]), v["reason"],
                 float(v["pace"]), float(v["sent_rate"]), int(v["queue"]), v["queue_error"], v["held"], now))
        store._db.execute("DELETE FROM relay_state WHERE updated_at < ?", (now - 7 * 86400,))


def read(store: Store, fresh_within: float, now: float | None = None) -> list[dict[str, Any]]:
    """Each relay's state across the processes heard from within ``fresh_within`` seconds."""
    ensure_table(store)
    now = time.time() if now is None else now
    rows = store._all("SELECT " + ", ".join(_COLUMNS) + " FROM relay_state WHERE updated_at >= ?"
                      " ORDER BY relay, updated_at", (now - fresh_within,))
    relays: dict[str, dict[str, Any]] = {}
    for row in rows:
        v = dict(zip(_COLUMNS, row))
        r = relays.setdefault(v["relay"], {"relay": v["relay"], "priorities": v["priorities"], "up": True,
                                           "skipped_until": 0.0, "reason": "", "pace": 0.0, "sent_rate": 0.0,
                                           "queue": -1, "queue_error": "", "held": "", "processes": 0,
                                           "updated_at": 0.0})
        r["processes"] += 1
        r["pace"] += v["pace"]
        r["sent_rate"] += v["sent_rate"]
        if not v["up"] and v["skipped_until"] > now:
            r["up"] = False
            if v["skipped_until"] > r["skipped_until"]:
                r["skipped_until"], r["reason"] = v["skipped_until"], v["reason"]
        if v["updated_at"] >= r["updated_at"]:  # the latest reading of the queue
            r["updated_at"] = v["updated_at"]
            r["queue"], r["queue_error"], r["held"] = v["queue"], v["queue_error"], v["held"]
    return list(relays.values())


class Reporter:
    """The thread that writes one process's view while a transport uses the book (``attach``),
    once more when the last one closes (``detach``)."""

    def __init__(self, settings: Settings, book: "RelayBook", interval: float = INTERVAL) -> None:
        self.settings, self.book, self.interval = settings, book, interval
        self._store: Store | None = None
        self._users = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None

    def flush(self, close: bool = False) -> None:
        with self._writing:  # an ending thread's last write and a new one's first never overlap
            try:
                if self._store is None:
                    self._store = Store(self.settings.store, timeout=5)
                write(self._store, self.book.views())
            except (StoreUnavailable, StoreCorrupt) as exc:
                get_logger().warning("relay state not written; tried again", error=str(exc))
            if close and self._store is not None:
                self._store.close()
                self._store = None

    def attach(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relay-board", daemon=True)
                self._thread.start()

    def poke(self) -> None:
        """A relay's state changed (down, or bulk held or let go): written now, not at the next interval."""
        self._wake.set()

    def detach(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self.flush()
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                if self._users == 0:
                    self._thread = None
                    break
        self.flush(close=True)
