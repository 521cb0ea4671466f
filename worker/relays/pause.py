"""While bulk mail is held at its relay, mail.bulk is paused on every beanstalkd server for the
hold's delay: a million held jobs then wait in beanstalkd instead of each being reserved, judged
and released again every BEANMAIL_RELAY_HOLD_DELAY. The jobs met before the pause are released
with that delay themselves (no retry spent); the pause is renewed while the hold lasts and simply
runs out when it ends. Urgent and normal tubes are never paused."""

from __future__ import annotations

import threading
import time
from typing import Callable

import greenstalk

from producer.client import connect

from ..logs import get_logger
from ..settings import Settings

BULK_TUBE = "mail.bulk"


class BulkPause:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._until = float("-inf")
        self._lock = threading.Lock()

    def hold(self) -> None:
        """Pause mail.bulk for the hold's delay, unless a pause this process set still runs."""
        seconds = self.settings.relay_hold_delay
        with self._lock:
            if self.clock() < self._until - seconds / 2:
                return
            self._until = self.clock() + seconds
        for url in self.settings.beanstalk_urls:
            try:
                with connect(url, timeout=5, encoding=None) as client:
                    client.use(BULK_TUBE)  # a tube exists while it is used: pausing one nobody uses fails
                    client.pause_tube(BULK_TUBE, seconds)
            except (OSError, greenstalk.Error) as exc:  # the jobs' own release delay still holds them
                get_logger().warning("relay hold: mail.bulk not paused", beanstalk=url, error=str(exc))
