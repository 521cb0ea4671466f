"""Releasing scheduled mailouts: every second, the chunks that are due go from the store to the
``mailout`` tube (producer/schedule.py holds them). Runs as a thread of ``beanmail fanout``, so
a deployment that fans out mailouts releases scheduled ones with no new program; several fan-out
processes may each run one (a chunk is leased before its put, and a chunk put twice mails
nobody twice: the recipients' keys are deterministic).
"""

from __future__ import annotations

import threading

from producer import envelope as env
from producer.blobs import BlobError
from producer.client import EnqueueError, Notifier
from producer.schedule import Schedule, clock

from .logs import get_logger, mask_text
from .settings import Settings

INTERVAL = 1.0  # seconds between looks at the store: a scheduled mailout starts at most this late


class Releaser:
    def __init__(self, settings: Settings, notifier: Notifier | None = None, interval: float = INTERVAL) -> None:
        self.settings = settings
        self.interval = interval
        self.notifier = notifier or Notifier(settings.beanstalk_url, secret=settings.secret, spool="", blobs="")
        self.log = get_logger()
        self._schedule: Schedule | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def release(self, now: float | None = None) -> int:
        """Put every chunk due at ``now``; how many. A chunk whose put fails stays in the store
        (its lease runs out and it is tried again); a store outage raises BlobError."""
        if self._schedule is None:
            self._schedule = Schedule(self.settings.store)
        released = 0
        while not self._stop.is_set():
            due = self._schedule.due(clock() if now is None else now)
            if not due:
                break
            for key, n, priority, body in due:
                _, pri = env.PRIORITIES.get(priority, env.PRIORITIES["bulk"])
                self.notifier.put_body(env.MAILOUT_TUBE, pri, 0, self.settings.ttr, body, key=f"{key}#{n}")
                self._schedule.released(key, n)
                released += 1
                self.log.info("scheduled mailout released", key=key, chunk=n)
        return released

    def run(self) -> None:
        """Until stop(): a store or beanstalkd outage is logged and waited out."""
        while not self._stop.is_set():
            try:
                self.release()
            except (BlobError, EnqueueError) as exc:
                self.log.warning("scheduled mailouts not released; retrying", error=mask_text(str(exc)))
                if self._schedule is not None:
                    self._schedule.close()
                    self._schedule = None
            self._stop.wait(self.interval)

    def start(self) -> "Releaser":
        self._thread = threading.Thread(target=self.run, name="mailout-releaser", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._schedule is not None:
            self._schedule.close()
        self.notifier.close()
