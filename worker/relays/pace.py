"""A relay's bulk pace: additive increase, multiplicative decrease (AIMD), as TCP paces a flow.

The relay's own answers are the signal. A 4xx, a refused or lost session, or replies that take
longer than the relay's own baseline latency by more than the target cut the pace in half (at most
once per round, so the answers to messages already on their way do not cut it again); each bulk
message the relay takes raises it by ``step / pace``, that is by ``step`` messages/s for every
second of clean sending. A cut starts from what was really sent lately, not from a ceiling that
never bound. Bulk messages book slots ``1 / pace`` apart; a job whose slot is a second or more
away goes back to beanstalkd until then (no retry spent), so a worker is never blocked by it.

Per relay and worker process: each process learns from the answers it gets, as each TCP flow does.
Time comes in as ``now`` (monotonic seconds), so the arithmetic is tested without a clock.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

DECREASE = 0.5  # the multiplicative decrease
RECENT = 5.0  # seconds of bulk sends the "really sent" rate is measured over
BASELINE_BUCKET = 60.0  # the baseline latency is the minimum over the last BASELINE_BUCKETS minutes
BASELINE_BUCKETS = 10
SMOOTHING = 0.2  # weight of a new latency sample in the moving average


@dataclass
class Pace:
    ceiling: float = 10000.0  # messages/s; also where the pace starts
    floor: float = 0.2
    step: float = 1.0
    latency_target: float = 1.0
    rate: float = 0.0
    cuts: int = 0
    last_cut_reason: str = ""
    _next_slot: float = 0.0
    _booked: dict[str, float] = field(default_factory=dict)
    _sent: collections.deque = field(default_factory=collections.deque)
    _latency: float | None = None  # moving average, seconds
    _minima: collections.deque = field(default_factory=collections.deque)  # (bucket, min latency)
    _last_cut: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rate = self.rate or self.ceiling

    # -- admission -------------------------------------------------------------------------------
    def book(self, key: str, now: float) -> float:
        """Seconds until ``key``'s slot (0 or less: it may go now). A key asks again when it
        comes back and keeps its slot, so a job released until its slot is not put last again."""
        with self._lock:
            slot = self._booked.get(key)
            if slot is None or slot < now - 60:
                slot = max(now, self._next_slot)
                self._next_slot = slot + 1.0 / self.rate
                self._booked[key] = slot
                if len(self._booked) > 10_000:
                    self._booked = {k: t for k, t in self._booked.items() if t >= now - 60}
            return slot - now

    def forget(self, key: str) -> None:
        with self._lock:
            self._booked.pop(key, None)

    # -- the relay's answers ---------------------------------------------------------------------
    def taken(self, latency: float, now: float, bulk: bool) -> None:
        """The relay took a message after ``latency`` seconds."""
        with self._lock:
            if bulk:
                self._sent.append(now)
            self._observe_latency(latency, now)
            if self._latency is not None and self._latency > self.baseline + self.latency_target:
                self._cut(now, f"replies take {self._latency:.2f}s, {self.baseline:.2f}s at best")
            elif bulk:
                self.rate = min(self.ceiling, self.rate + self.step / self.rate)

    def congested(self, why: str, now: float, latency: float | None = None) -> None:
        """A 4xx, or the relay refused or dropped a session."""
        with self._lock:
            if latency is not None:
                self._observe_latency(latency, now)
            self._cut(now, why)

    @property
    def baseline(self) -> float:
        return min((m for _, m in self._minima), default=0.0)

    @property
    def latency(self) -> float | None:
        return self._latency

    def sent_rate(self, now: float) -> float:
        """Bulk messages/s the relay really took over the last few seconds."""
        with self._lock:
            return self._recent(now)

    def _recent(self, now: float) -> float:
        while self._sent and self._sent[0] < now - RECENT:
            self._sent.popleft()
        return len(self._sent) / RECENT

    def _observe_latency(self, latency: float, now: float) -> None:
        latency = max(0.0, latency)
        self._latency = latency if self._latency is None else (1 - SMOOTHING) * self._latency + SMOOTHING * latency
        bucket = int(now // BASELINE_BUCKET)
        if self._minima and self._minima[-1][0] == bucket:
            self._minima[-1] = (bucket, min(self._minima[-1][1], latency))
        else:
            self._minima.append((bucket, latency))
        while self._minima and self._minima[0][0] <= bucket - BASELINE_BUCKETS:
            self._minima.popleft()

    def _cut(self, now: float, why: str) -> None:
        # once per round: the answers to what was already on its way carry the same news
        if now - self._last_cut < max(1.0, self._latency or 0.0, 1.0 / self.rate):
            return
        sent = self._recent(now)
        start = min(self.rate, sent) if sent > 0 else self.rate
        self.rate = max(self.floor, start * DECREASE)
        self._next_slot = min(self._next_slot, now + 1.0 / self.rate)
        self._last_cut = now
        self.cuts += 1
        self.last_cut_reason = why
