"""Putting events on the events tube: the one function the pipeline and the feedback intake
call (``emit``). It never raises: a delivery or a bounce is recorded whatever happens to its
event. When beanstalkd cannot take the event it goes to the events spool
(BEANMAIL_EVENTS_SPOOL, appended with fsync by ``producer.spool``; ``beanmail events run``
moves it on), and when even that fails the event is logged whole at error: never lost silently.
"""

from __future__ import annotations

import threading
from typing import Sequence

import greenstalk

from producer import spool
from producer.beanstalk import CONNECTION_ERRORS, BatchRefused, connect, put_batch

from ..logs import get_logger
from ..settings import Settings
from .config import enabled, wanted_types
from .model import Event

PRIORITY = 1024
TTR = 300  # seconds a reserved event is its runner's: a batch over slow endpoints fits easily


class Emitter:
    """One process's connection to the events tube (thread-safe; worker loops share it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wanted = wanted_types(settings)
        self.enabled = enabled(settings)
        self._client: greenstalk.Client | None = None
        self._using = ""
        self._lock = threading.Lock()

    def emit(self, *events: Event) -> None:
        self.emit_many(events)

    def emit_many(self, events: Sequence[Event]) -> None:
        """Queue ``events`` (those BEANMAIL_EVENTS_TYPES wants); never raises."""
        if not self.enabled:
            return
        try:
            bodies = [e.job() for e in events if e.type in self.wanted]
        except Exception as exc:  # noqa: BLE001 - a bug in building one: logged, the delivery goes on
            get_logger().exception("event not built", error=repr(exc), events=[repr(e)[:2000] for e in events])
            return
        if not bodies:
            return
        with self._lock:
            try:
                self._put(bodies)
                return
            except Exception as exc:  # noqa: BLE001 - every server tried; fall back to the spool
                reason = str(exc) or type(exc).__name__
            self._spool(bodies, reason)

    def _put(self, bodies: list[bytes]) -> None:
        urls = self.settings.beanstalk_urls
        last: Exception | None = None
        for attempt in range(len(urls) + 1):  # the open connection, then each server of the fleet afresh
            try:
                if self._client is None:
                    url = urls[attempt % len(urls)]
                    self._client = connect(url, timeout=self.settings.beanstalk_timeout, connect_timeout=2.0,
                                           encoding=None)
                    self._using = "default"
                _, self._using = put_batch(self._client, [(self.settings.events_tube, PRIORITY, b) for b in bodies],
                                           TTR, self._using)
                return
            except (*CONNECTION_ERRORS, BatchRefused) as exc:
                last = exc
                self.close()
        assert last is not None
        raise last

    def _spool(self, bodies: list[bytes], reason: str) -> None:
        log = get_logger()
        path = self.settings.events_spool
        try:
            if not path:
                raise OSError("no BEANMAIL_EVENTS_SPOOL")
            for body in bodies:
                spool.append(path, self.settings.events_tube, PRIORITY, 0, TTR, body)
            log.error("events tube unreachable; events spooled", error=reason, events=len(bodies), spool=path)
        except Exception as exc:  # noqa: BLE001 - the last resort: the whole events in the log
            log.critical("events lost to beanstalkd and the spool; here they are whole", error=reason,
                         spool_error=str(exc), events=[b.decode("utf-8", "replace") for b in bodies])

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except OSError:
                pass
        self._client = None


_emitters: dict[tuple[str, ...], Emitter] = {}
_emitters_lock = threading.Lock()


def emitter_for(settings: Settings) -> Emitter:
    """The process's emitter for these settings (one connection, made when first needed)."""
    ident = (settings.beanstalk_url, settings.events_url, settings.events_tube, settings.events_types,
             settings.events_spool)
    with _emitters_lock:
        found = _emitters.get(ident)
        if found is None:
            found = _emitters[ident] = Emitter(settings)
        return found


def emit(settings: Settings, *events: Event) -> None:
    """Queue delivery events; a no-op unless BEANMAIL_EVENTS_URL is set. Never raises."""
    if settings.events_url and events:
        emitter_for(settings).emit_many(events)
