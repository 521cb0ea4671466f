"""Relay sessions on an event loop: many deliveries in flight without a thread each.

The driver of the protocol core (``protocol.py``) on asyncio streams; ``smtp.SmtpSession`` is
the same conversations on a blocking socket. Written here rather than with aiosmtplib, which
cannot pipeline (its protocol reads one reply per command written): with PIPELINING (RFC 2920)
a message costs two round trips instead of four, which is what 250 sessions waiting on slow
servers spend their time on (measured in `make bench`'s slow-receivers scenario: 0.76 of ideal
with aiosmtplib, see docs/operations.md for this version's figure).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Callable, Protocol, Sequence

from ..outcomes import Deferred, Outage, Outcome
from ..settings import SmtpTarget
from .protocol import (Close, Lost, Read, Reply, StartTls, Stale, Write, is_last_line, open_session, parse_reply,
                       quit_session, step, transaction)

_LOST = (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, EOFError, ssl.SSLError)


class Session:
    """One connection on asyncio streams, performing a conversation's operations."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
                 data_timeout: float, host: str, tls: Callable[[], ssl.SSLContext]) -> None:
        self.reader, self.writer, self.timeout, self.data_timeout = reader, writer, timeout, data_timeout
        self.host, self.tls = host, tls
        self.extensions: set[str] = set()
        self.holder = ""  # the connection slot it holds (``ConnectionSlots``), if any
        self.on_close: Callable[[], None] | None = None  # told once, when the connection closes

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    async def run(self, conversation: object) -> object:
        """Drive a conversation to its end (as ``smtp._Connection.run``, awaiting its reads)."""
        value: Reply | None = None
        error: Lost | None = None
        while True:
            ended, op = step(conversation, value, error)
            if ended:
                return op
            value, error = None, None
            try:
                value = await self._perform(op)
            except Lost as exc:
                error = exc
            except _LOST as exc:
                error = Lost(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def _perform(self, op: object) -> Reply | None:
        if isinstance(op, Close):
            self.close()
            return None
        if not self.open:
            raise Lost("the connection is closed")
        if isinstance(op, Write):
            self.writer.write(op.data)
            return None
        if isinstance(op, Read):
            return await self.reply(self.data_timeout if op.final else self.timeout)
        if isinstance(op, StartTls):
            await self.writer.start_tls(self.tls(), server_hostname=self.host)
            return None
        raise TypeError(f"not an SMTP operation: {op!r}")

    async def reply(self, timeout: float) -> Reply:
        """One reply, its lines joined (``250-a`` ... ``250 b``)."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line.endswith(b"\n"):
                raise Lost("the server closed the connection")
            lines.append(line)
            if is_last_line(line):
                return parse_reply(lines)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


class ConnectionSlots(Protocol):
    """Who may open a connection: a count kept elsewhere (the fleet's per-domain cap in the
    store). ``take`` a slot before connecting (Deferred with a delay of its own when none is
    free), ``renew`` it at each reuse (False: it lapsed and went to another), ``give_back`` at close."""

    async def take(self) -> str: ...

    async def renew(self, holder: str) -> bool: ...

    def give_back(self, holder: str) -> None: ...


class RelayPool:
    """Sessions to one relay, opened as deliveries need them and kept for the next."""

    def __init__(self, target: SmtpTarget, *, timeout: float = 30.0, data_timeout: float = 600.0,
                 helo: str = "", cafile: str = "", verify: bool = True, slots: ConnectionSlots | None = None) -> None:
        """``verify``: check the server's certificate (a relay); False for an MX host, where
        STARTTLS is opportunistic and a certificate for another name is the rule, not an attack.
        ``slots``: each connection holds one while open (none needed without)."""
        self.target = target
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or socket.getfqdn()
        self.cafile = cafile or None
        self.verify = verify
        self._context: ssl.SSLContext | None = None
        self.idle: list[Session] = []
        self.connects = 0
        self.slots = slots

    def _where(self) -> str:
        return f"{self.target.host}:{self.target.port}"

    def _tls_context(self) -> ssl.SSLContext:
        """Made once per pool, when a server first wants TLS: loading the system's certificates
        for every connection cost the event loop more than the sessions themselves."""
        if self._context is None:
            if self.verify:
                self._context = ssl.create_default_context(cafile=self.cafile)
            else:  # opportunistic: encrypted, the certificate not checked (nothing to load)
                self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        return self._context

    async def _connect(self) -> Session:
        t = self.target
        holder = await self.slots.take() if self.slots is not None else ""
        self.connects += 1
        context = self._tls_context() if t.tls == "ssl" else None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                t.host, t.port, ssl=context, limit=1 << 16), self.timeout)
        except _LOST as exc:
            if holder:
                self.slots.give_back(holder)  # type: ignore[union-attr]
            raise Outage(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}") from None
        session = Session(reader, writer, self.timeout, self.data_timeout, t.host, self._tls_context)
        if holder:
            session.holder = holder
            session.on_close = lambda: self.slots.give_back(holder)  # type: ignore[union-attr]
        try:
            session.extensions = await session.run(open_session(t, self.helo, self._where()))  # type: ignore[assignment]
        except Outcome:
            session.close()
            raise
        except Lost as exc:
            session.close()
            raise Deferred(f"cannot connect to {self._where()}: {exc}") from None
        return session

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        """``before_end``: called after the 354, before the content goes; what it raises (an
        Outcome) abandons the transaction with its connection, nothing of the content sent."""
        session = await self._idle_session()
        reused = session is not None
        if session is None:
            session = await self._connect()
        try:
            try:
                reply = await self._transaction(session, sender, recipients, message, before_end)
            except Stale:
                session.close()
                if not reused:
                    raise Deferred(f"{self._where()} dropped the connection") from None
                session = await self._connect()  # the server closed a kept-alive one: one fresh try
                try:
                    reply = await self._transaction(session, sender, recipients, message, before_end)
                except Stale as exc:
                    session.close()
                    raise Deferred(f"{self._where()} dropped the connection: {exc}") from None
        except Outcome:
            if session.open:  # refused after a good RSET: the session serves the next one
                self.idle.append(session)
            raise
        except BaseException:
            session.close()
            raise
        self.idle.append(session)
        return reply

    async def _idle_session(self) -> Session | None:
        """A kept connection whose slot (if it needs one) is still its own."""
        while self.idle:
            session = self.idle.pop()
            if not session.open:
                session.close()
                continue
            if session.holder and not await self.slots.renew(session.holder):  # type: ignore[union-attr]
                session.holder = ""
                session.on_close = None  # lapsed: the slot is another's now, nothing to give back
                session.close()
                continue
            return session
        return None

    async def _transaction(self, session: Session, sender: str, recipients: Sequence[str],
                           message: bytes, before_end: Callable[[], None] | None = None) -> Reply:
        return await session.run(transaction(self._where(), session.extensions, sender, recipients, message,
                                             before_end))  # type: ignore[return-value]

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for session in idle:
            session.timeout = min(session.timeout, 2.0)
            try:
                await session.run(quit_session())
            finally:
                session.close()
