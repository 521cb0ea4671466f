"""The relay MTA's queue length, from the command the operator names (BEANMAIL_RELAY_QUEUE_COMMAND).

The command runs through the shell with ``BEANMAIL_RELAY_HOST`` and ``BEANMAIL_RELAY_PORT`` in
its environment (one command can serve several relays) and prints either one number
(``postqueue -j | wc -l``) or Postfix's ``postqueue -j`` output, one JSON object per queued
message, which is counted. It runs at most every BEANMAIL_RELAY_QUEUE_INTERVAL seconds per relay;
between runs this process's own bulk admissions of the last few seconds are added to the reading,
so a reading taken while messages were on their way never lets more through than the mark.

A command that fails, times out or prints something else holds bulk mail (the reason says why):
a relay whose queue cannot be seen is not fed blind.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

COMMAND_TIMEOUT = 10.0  # seconds the command may take
ADMIT_GRACE = 2.0  # admissions this long before a reading began may not be in it yet: counted on top


class QueueUnreadable(Exception):
    """The command failed or printed something that is not a queue length."""


def parse_queue_output(output: str) -> int:
    """One number, or ``postqueue -j``'s lines (one JSON object per message; none: empty)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return 0
    if len(lines) == 1 and lines[0].isdigit():
        return int(lines[0])
    count = 0
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            raise QueueUnreadable(f"not a number nor postqueue -j lines: {line[:80]!r}") from None
        if not isinstance(item, dict):
            raise QueueUnreadable(f"not a number nor postqueue -j lines: {line[:80]!r}")
        count += 1
    return count


def run_queue_command(command: str, host: str, port: int, timeout: float = COMMAND_TIMEOUT) -> int:
    env = {**os.environ, "BEANMAIL_RELAY_HOST": host, "BEANMAIL_RELAY_PORT": str(port)}
    try:
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise QueueUnreadable(f"queue command took over {timeout:g}s") from None
    except OSError as exc:
        raise QueueUnreadable(f"queue command could not run: {exc}") from None
    if proc.returncode != 0:
        raise QueueUnreadable(f"queue command exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")
    return parse_queue_output(proc.stdout)


@dataclass
class QueueReading:
    length: int | None  # None: unreadable (``error`` says why)
    error: str = ""
    at: float = 0.0  # wall time of the reading


class QueueWatch:
    """One relay's queue, read when the last reading is older than ``interval``."""

    def __init__(self, read: Callable[[], int], high: int, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.high = high
        self.interval = interval
        self.clock = clock
        self.reading = QueueReading(None)  # not read yet
        self._read_at = float("-inf")  # monotonic: when the last reading began
        self._admitted: collections.deque = collections.deque()  # monotonic times of admissions
        self._lock = threading.Lock()

    def estimate(self) -> tuple[int, int] | None:
        """The last reading, and this process's admissions it may not include yet; None when
        the queue cannot be read."""
        now = self.clock()
        with self._lock:
            if now - self._read_at >= self.interval:
                began = now
                try:
                    self.reading = QueueReading(self.read(), "", time.time())
                except QueueUnreadable as exc:
                    self.reading = QueueReading(None, str(exc), time.time())
                self._read_at = began
            while self._admitted and self._admitted[0] < self._read_at - ADMIT_GRACE:
                self._admitted.popleft()
            if self.reading.length is None:
                return None
            return self.reading.length, len(self._admitted)

    def admitted(self) -> None:
        with self._lock:
            self._admitted.append(self.clock())

    def held(self) -> str:
        """Why bulk mail must wait now, or ""."""
        estimate = self.estimate()
        if estimate is None:
            return f"queue length unknown ({self.reading.error})"
        length, mine = estimate
        if length + mine >= self.high:
            more = f" and {mine} just sent" if mine else ""
            return f"queue {length}{more} at or above BEANMAIL_RELAY_QUEUE_HIGH {self.high}"
        return ""
