"""Sending through a priority's relays in order: the first one up takes the message; one that
refuses the connection, times out or answers 421 is skipped (``RelayBook.down``) and the next one
tried, within the same send. Only failures where the relay took nothing fail over: a message
whose end of data went without a reply is in doubt and never goes to a second relay.

``FailoverTransport`` is the blocking pipeline's transport (one ``SmtpSession`` per relay and
loop); ``FailoverPool`` the event loop's (one ``RelayPool`` per relay). Both give the pipeline a
``route(priority)`` with the ``send`` (and ``send_many``) it already knows.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from ..outcomes import Outage, Outcome
from ..settings import Settings
from ..transports.aio import RelayPool
from ..transports.smtp import Reply, SmtpSession
from .book import RelayBook, RelayState, book_for, is_down

Item = tuple[str, Sequence[str], bytes]


class Try:
    """One relay's turn at a send, as ``with attempt:`` around it: the relay's answer is told to
    the book (its latency, whether it is down); a refusal that says the relay is down is
    swallowed so that the next relay takes the message; any other outcome goes to the caller."""

    def __init__(self, book: RelayBook, relay: RelayState, priority: str, downs: list[Outcome]) -> None:
        self.book, self.relay, self.priority, self.downs = book, relay, priority, downs

    def __enter__(self) -> "Try":
        self.started = time.monotonic()
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        elapsed = time.monotonic() - self.started
        if exc is None:
            self.book.answered(self.relay, None, elapsed, self.priority)
            return False
        if not isinstance(exc, Outcome):
            return False
        self.book.answered(self.relay, exc, elapsed, self.priority)
        if not is_down(exc):
            return False
        self.relay.failed_over += 1
        self.downs.append(exc)
        return True


def tries(book: RelayBook, priority: str) -> Iterator[Try]:
    """The priority's relays in order, each a ``Try``; after the last, the last relay's refusal:
    every relay down is an outage, waited out with no retry spent."""
    downs: list[Outcome] = []
    for relay in book.order(priority):
        yield Try(book, relay, priority, downs)
    raise downs[-1] if downs else Outage(f"no relay configured for {priority} mail")


class Route:
    """One priority's relays (blocking sessions)."""

    def __init__(self, book: RelayBook, priority: str, sessions: dict[str, SmtpSession]) -> None:
        self.book, self.priority, self.sessions = book, priority, sessions

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        for attempt in tries(self.book, self.priority):
            with attempt:
                return self.sessions[attempt.relay.name].send(sender, recipients, message, touch, before_end)
        raise AssertionError("unreachable: tries() raises when every relay is down")

    def send_many(self, items: Sequence[Item], touch: Callable[[], None],
                  done: Callable[[int, Reply | Exception], None],
                  before_end: Callable[[int], None] | None = None) -> None:
        """A batch on the first relay up; what it could not take for being down goes on the next."""
        todo = list(range(len(items)))
        relays = self.book.order(self.priority)
        last: list[Exception] = []
        for relay in relays:
            if not todo:
                return
            again: list[int] = []
            mark = [time.monotonic()]

            def ended(j: int, outcome: Reply | Exception, relay: RelayState = relay, part: list[int] = todo,
                      again: list[int] = again, mark: list[float] = mark) -> None:
                now = time.monotonic()
                latency, mark[0] = now - mark[0], now
                problem = outcome if isinstance(outcome, Outcome) else None
                self.book.answered(relay, problem, latency, self.priority)
                if problem is not None and is_down(problem):
                    again.append(part[j])
                    last.append(problem)
                    return
                done(part[j], outcome)

            part = todo
            self.sessions[relay.name].send_many([items[i] for i in part], touch, ended,
                                                None if before_end is None else (lambda j, part=part: before_end(part[j])))
            relay.failed_over += len(again)
            todo = sorted(again)
        for i in todo:  # every relay refused: an outage, waited out with no retry spent
            done(i, last[-1])


class FailoverTransport:
    """The blocking pipeline's transport through the relays of every priority."""

    def __init__(self, settings: Settings, book: RelayBook | None = None) -> None:
        self.book = book or book_for(settings)
        self.sessions: dict[str, SmtpSession] = {}
        for name, relay in self.book.relays.items():
            session = SmtpSession(relay.target, timeout=settings.smtp_timeout, helo=settings.helo_name,
                                  cafile=settings.smtp_cafile, data_timeout=settings.smtp_data_timeout)
            session.relay = True  # unreachable: an outage, and here a relay to skip
            self.sessions[name] = session
        self._routes = {p: Route(self.book, p, self.sessions) for p in self.book.routes}
        self._closed = False
        self.book.attach()

    @property
    def session(self) -> SmtpSession:
        """Normal mail's first relay's session (with one relay, the one session)."""
        return self.sessions[self.book.routes["normal"][0].name]

    def route(self, priority: str) -> Route:
        return self._routes.get(priority) or self._routes["normal"]

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        return self.route("normal").send(sender, recipients, message, touch, before_end)

    def send_many(self, items: Sequence[Item], touch: Callable[[], None],
                  done: Callable[[int, Reply | Exception], None],
                  before_end: Callable[[int], None] | None = None) -> None:
        self.route("normal").send_many(items, touch, done, before_end)

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        if not self._closed:  # a transport closed twice detaches once
            self._closed = True
            self.book.detach()


class PoolRoute:
    """One priority's relays (event-loop sessions)."""

    def __init__(self, book: RelayBook, priority: str, pools: dict[str, RelayPool]) -> None:
        self.book, self.priority, self.pools = book, priority, pools

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        for attempt in tries(self.book, self.priority):
            with attempt:
                return await self.pools[attempt.relay.name].send(sender, recipients, message, before_end)
        raise AssertionError("unreachable: tries() raises when every relay is down")


class FailoverPool:
    """The event loop's sessions to the relays of every priority (worker/flight.py)."""

    def __init__(self, settings: Settings, book: RelayBook | None = None) -> None:
        self.book = book or book_for(settings)
        self.pools = {name: RelayPool(relay.target, timeout=settings.smtp_timeout,
                                      data_timeout=settings.smtp_data_timeout, helo=settings.helo_name,
                                      cafile=settings.smtp_cafile)
                      for name, relay in self.book.relays.items()}
        self._routes = {p: PoolRoute(self.book, p, self.pools) for p in self.book.routes}
        self._closed = False
        self.book.attach()

    def route(self, priority: str) -> PoolRoute:
        return self._routes.get(priority) or self._routes["normal"]

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        return await self.route("normal").send(sender, recipients, message, before_end)

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
        if not self._closed:  # a transport closed twice detaches once
            self._closed = True
            self.book.detach()
