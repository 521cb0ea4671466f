"""This process's view of its relays, and the choices made from it: which relay a priority's mail
tries first (the first one up, in the configured order; a dead one skipped for
BEANMAIL_RELAY_RETRY_AFTER seconds, then tried again), and whether a bulk message may go now (the
relay's queue under its high-water mark, the message's slot in the relay's pace come).

One book per process, shared by its loops and its event loop (``book_for``): what one loop learns
of a relay (it refused a session) spares the others the same wait.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from producer.envelope import Envelope

from ..logs import get_logger
from ..outcomes import Deferred, Outage, Outcome, Wait, Withheld
from ..settings import Settings, SmtpTarget
from .pace import Pace
from .pause import BulkPause
from .plan import RelayPlan, relay_name
from .queue import QueueWatch, run_queue_command


def is_down(exc: BaseException) -> bool:
    """A relay that cannot be reached (refused, timed out) or closes with 421: try the next one.
    Nothing of the message was taken (an InDoubt is never this)."""
    from ..store import StoreUnavailable

    if isinstance(exc, Outage) and not isinstance(exc, StoreUnavailable):
        return True
    return isinstance(exc, Deferred) and str(getattr(exc, "reply", "")).startswith("421")


def is_congestion(exc: BaseException) -> bool:
    """An answer that says the relay is loaded: any 4xx, or a session it refused or dropped."""
    if isinstance(exc, Withheld):
        return False
    return is_down(exc) or (isinstance(exc, Deferred) and str(getattr(exc, "reply", "")).startswith("4"))


@dataclass
class RelayState:
    target: SmtpTarget
    priorities: list[str]
    pace: Pace
    queue: QueueWatch | None = None
    dead_until: float = float("-inf")  # monotonic
    skipped_until: float = 0.0  # the same, wall time (shown)
    down_reason: str = ""
    held: str = ""  # why bulk mail was last held at this relay, "" when it went
    sent: int = 0
    failed_over: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return relay_name(self.target)

    def up(self, now: float) -> bool:
        return now >= self.dead_until

    def view(self, now: float) -> dict[str, Any]:
        """What `beanmail status` and /metrics show of it."""
        up = self.up(now)
        reading = self.queue.reading if self.queue is not None else None
        return {"relay": self.name, "priorities": ",".join(self.priorities), "up": up,
                "skipped_until": 0.0 if up else self.skipped_until, "reason": "" if up else self.down_reason,
                "pace": round(self.pace.rate, 3), "sent_rate": round(self.pace.sent_rate(now), 3),
                "queue": -1 if reading is None or reading.length is None else reading.length,
                "queue_error": reading.error if reading is not None else "",
                "held": self.held}


class RelayBook:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 read_queue: Callable[[SmtpTarget], int] | None = None, pause: Any = None) -> None:
        """``read_queue``: the queue length of a relay (the operator's command by default);
        ``pause``: what pauses mail.bulk while bulk is held (``BulkPause`` by default)."""
        self.settings = settings
        self.clock = clock
        self.plan = RelayPlan.from_settings(settings)
        command = settings.relay_queue_command
        if read_queue is None and command:
            def read_queue(t: SmtpTarget) -> int:
                return run_queue_command(command, t.host, t.port)
        self.relays: dict[str, RelayState] = {}
        for t in self.plan.relays:
            priorities = self.plan.priorities_of(t)
            watch = None
            if read_queue is not None and "bulk" in priorities:
                watch = QueueWatch(lambda t=t: read_queue(t), settings.relay_queue_high, settings.relay_queue_interval,
                                   clock)
            pace = Pace(ceiling=settings.relay_pace_max, floor=settings.relay_pace_min, step=settings.relay_pace_step,
                        latency_target=settings.relay_latency_target)
            self.relays[relay_name(t)] = RelayState(t, priorities, pace, watch)
        self.routes = {p: [self.relays[relay_name(t)] for t in targets] for p, targets in self.plan.routes.items()}
        self.pause = pause or BulkPause(settings, clock)
        self.reporter: Any = None  # the board's writer (book_for sets it): attached while a transport uses the book

    def attach(self) -> None:
        if self.reporter is not None:
            self.reporter.attach()

    def detach(self) -> None:
        if self.reporter is not None:
            self.reporter.detach()

    def changed(self) -> None:
        if self.reporter is not None:
            self.reporter.poke()

    # -- choosing ---------------------------------------------------------------------------------
    def order(self, priority: str) -> list[RelayState]:
        """The priority's relays that are up, in order; when none is, all of them, the one whose
        skip ends first first (with nothing to fail over to, a relay back early is found at once,
        and a send that fails is an outage: released with the backoff, no retry spent)."""
        now = self.clock()
        route = self.routes.get(priority) or self.routes["normal"]
        live = [r for r in route if r.up(now)]
        return live or sorted(route, key=lambda r: r.dead_until)

    def first_up(self, priority: str) -> RelayState | None:
        now = self.clock()
        return next((r for r in self.routes.get(priority) or self.routes["normal"] if r.up(now)), None)

    def admit(self, envelope: Envelope) -> None:
        """Bulk mail only: held while its relay's queue is at the high-water mark (or unreadable),
        paced to the relay's AIMD rate; either way released with a delay of its own (no retry spent).
        Urgent and normal mail always go."""
        if envelope.priority != "bulk":
            return
        relay = self.first_up("bulk")
        if relay is None:
            return  # the send says every relay is down, with its own delay
        if relay.queue is not None:
            reason = relay.queue.held()
            if bool(reason) != bool(relay.held):
                if reason:
                    get_logger().warning("relay: bulk mail held", relay=relay.name, reason=reason)
                else:
                    get_logger().info("relay: bulk mail goes again", relay=relay.name)
                self.changed()
            relay.held = reason
            if reason:
                self.pause.hold()  # mail.bulk paused meanwhile: held jobs wait in beanstalkd, not churned
                raise Wait(f"relay {relay.name}: bulk held: {reason}", self.settings.relay_hold_delay)
        wait = relay.pace.book(envelope.id, self.clock())
        if wait >= 1:
            raise Wait(f"relay {relay.name}: bulk paced at {relay.pace.rate:.3g}/s"
                       f" ({relay.pace.last_cut_reason or 'its ceiling'})", wait)
        if relay.queue is not None:
            relay.queue.admitted()

    # -- what the relays answered -----------------------------------------------------------------
    def answered(self, relay: RelayState, outcome: Outcome | None, latency: float, priority: str) -> None:
        """A send through ``relay`` ended: None when it took the message."""
        now = self.clock()
        if outcome is None:
            relay.sent += 1
            relay.pace.taken(latency, now, bulk=priority == "bulk")
            if relay.down_reason:  # it was skipped as dead, and takes mail again
                relay.down_reason, relay.dead_until = "", float("-inf")
                get_logger().info("relay up again", relay=relay.name)
                self.changed()
            return
        if is_congestion(outcome):
            relay.pace.congested(f"{type(outcome).__name__}: {outcome.reply or outcome.reason}"[:200], now, latency)
        if is_down(outcome):
            self.down(relay, outcome.reason)

    def down(self, relay: RelayState, why: str) -> None:
        now = self.clock()
        with relay._lock:
            was_up = relay.up(now)
            relay.dead_until = now + self.settings.relay_retry_after
            relay.skipped_until = time.time() + self.settings.relay_retry_after
            relay.down_reason = why
        if was_up:
            get_logger().warning("relay down: skipped, then tried again", relay=relay.name, reason=why,
                                 retry_in=self.settings.relay_retry_after)
            self.changed()

    def views(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [r.view(now) for r in self.relays.values()]


_books: dict[tuple, RelayBook] = {}
_books_lock = threading.Lock()


def book_for(settings: Settings) -> RelayBook:
    """This process's one book for these relay settings (its loops share it)."""
    key = tuple(getattr(settings, f) for f in (
        "smtp_url", "smtp_url_urgent", "smtp_url_bulk", "relay_retry_after", "relay_queue_command",
        "relay_queue_high", "relay_queue_interval", "relay_hold_delay", "relay_pace_max", "relay_pace_min",
        "relay_pace_step", "relay_latency_target"))
    with _books_lock:
        book = _books.get(key)
        if book is None:
            from .board import Reporter

            book = _books[key] = RelayBook(settings)
            book.reporter = Reporter(settings, book)
        return book
