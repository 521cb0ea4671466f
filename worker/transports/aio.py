"""Relay sessions on an event loop: many deliveries in flight without a thread each.

A small SMTP client on asyncio streams rather than aiosmtplib: aiosmtplib cannot pipeline (its
protocol reads one reply per command written), and with PIPELINING (RFC 2920) a message costs
two round trips instead of four, which is what 250 sessions waiting on slow servers spend their
time on (measured in `make bench`'s slow-receivers scenario: 0.76 of ideal with aiosmtplib,
see docs/operations.md for this version's figure).

Replies are classified as the blocking session classifies them (``smtp._classify``): a 4xx defers,
a 5xx bounces (hard when the address itself is refused), a connection lost after the end of data
is in doubt (the server may have taken the message), and a kept-alive connection the server
closed meanwhile is tried once more on a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from typing import Callable, Sequence

from ..outcomes import Deferred, Outage, Outcome
from ..settings import SmtpTarget
from .smtp import (Reply, _classify, _reply, content, envelope_refusal, no_final_reply, smtputf8_parameter,
                   smtputf8_refusal)

_LOST = (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, EOFError)


class Session:
    """One connection: EHLO done, STARTTLS and AUTH as the target wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.extensions: set[str] = set()

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    async def reply(self, timeout: float | None = None) -> Reply:
        """One reply, its lines joined (``250-a`` ... ``250 b``)."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout or self.timeout)
            if not line.endswith(b"\n"):
                raise EOFError("the server closed the connection")
            lines.append(line[4:].strip())
            if line[3:4] != b"-":
                try:
                    return _reply(int(line[:3]), b" ".join(lines))
                except ValueError:
                    raise EOFError(f"not an SMTP reply: {line[:40]!r}") from None

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class RelayPool:
    """Sessions to one relay, opened as deliveries need them and kept for the next."""

    def __init__(self, target: SmtpTarget, *, timeout: float = 30.0, data_timeout: float = 600.0,
                 helo: str = "", cafile: str = "", verify: bool = True) -> None:
        """``verify``: check the server's certificate (a relay); False for an MX host, where
        STARTTLS is opportunistic and a certificate for another name is the rule, not an attack."""
        self.target = target
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or socket.getfqdn()
        self.cafile = cafile or None
        self.verify = verify
        self._context: ssl.SSLContext | None = None
        self.idle: list[Session] = []
        self.connects = 0

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
        self.connects += 1
        context = self._tls_context() if t.tls == "ssl" else None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                t.host, t.port, ssl=context, limit=1 << 16), self.timeout)
        except (*_LOST, ssl.SSLError) as exc:
            raise Outage(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}") from None
        session = Session(reader, writer, self.timeout)
        try:
            greeting = await session.reply()
            if greeting.code != 220:
                raise Deferred(f"{self._where()} greeting refused", reply=str(greeting))
            ehlo = await self._ehlo(session)
            if "STARTTLS" in session.extensions and t.tls in ("required", "opportunistic"):
                started = await session.command("STARTTLS")
                if started.code != 220:
                    raise Deferred(f"{self._where()} refused STARTTLS", reply=str(started))
                await writer.start_tls(self._tls_context(), server_hostname=t.host)
                ehlo = await self._ehlo(session)
            elif t.tls == "required":
                raise Deferred(f"{self._where()} does not offer STARTTLS and it is required")
            if t.user:
                secret = base64.b64encode(f"\0{t.user}\0{t.password}".encode()).decode()
                auth = await session.command(f"AUTH PLAIN {secret}")
                if auth.code != 235:
                    raise Deferred(f"{self._where()} AUTH failed", reply=str(auth))
            if ehlo.code // 100 != 2:
                raise Deferred(f"{self._where()} refused the session", reply=str(ehlo))
        except Outcome:
            session.close()
            raise
        except (*_LOST, ssl.SSLError) as exc:
            session.close()
            raise Deferred(f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}") from None
        return session

    async def _ehlo(self, session: Session) -> Reply:
        session.writer.write(f"EHLO {self.helo}\r\n".encode())
        lines = []
        while True:
            line = await asyncio.wait_for(session.reader.readline(), self.timeout)
            if not line.endswith(b"\n"):
                raise EOFError("the server closed the connection")
            lines.append(line)
            if line[3:4] != b"-":
                break
        code = int(lines[-1][:3])
        if code != 250:
            return await session.command(f"HELO {self.helo}")
        session.extensions = {ln[4:].split(b" ")[0].strip().decode("ascii", "replace").upper() for ln in lines[1:]}
        return _reply(code, lines[0][4:])

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        """``before_end``: called after the 354, before the content goes; what it raises (an
        Outcome) abandons the transaction with its connection, nothing of the content sent."""
        reused = bool(self.idle)
        session = self.idle.pop() if reused else await self._connect()
        try:
            try:
                reply = await self._transaction(session, sender, recipients, message, before_end)
            except _Stale:
                session.close()
                if not reused:
                    raise Deferred(f"{self._where()} dropped the connection") from None
                session = await self._connect()  # the server closed a kept-alive one: one fresh try
                try:
                    reply = await self._transaction(session, sender, recipients, message, before_end)
                except _Stale as exc:
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

    async def _transaction(self, session: Session, sender: str, recipients: Sequence[str],
                           message: bytes, before_end: Callable[[], None] | None = None) -> Reply:
        refusal = smtputf8_refusal(self._where(), "SMTPUTF8" in session.extensions, sender, recipients)
        if refusal is not None:
            raise refusal
        try:
            lines = [f"MAIL FROM:<{sender}>{smtputf8_parameter(sender, recipients)}", *(f"RCPT TO:<{r}>" for r in recipients),
                     "DATA"]
            if "PIPELINING" in session.extensions:  # one write, the replies read in order
                session.writer.write(("\r\n".join(lines) + "\r\n").encode())
                mail = await session.reply()
                rcpts = [await session.reply() for _ in recipients]
                data = await session.reply()
            else:
                mail = await session.command(lines[0])
                rcpts, data = [], Reply(503, "not sent")
                if mail.code == 250:
                    rcpts = [await session.command(line) for line in lines[1:-1]]
                    if any(r.code in (250, 251) for r in rcpts):
                        data = await session.command("DATA")
            if mail.code == 421:  # the server closed the session (after its last message, say)
                raise _Stale(f"421 {mail.text}")
            refusal = envelope_refusal(self.target.host, mail, rcpts, data)
            if refusal is not None:
                if data.code == 354:
                    session.close()  # it waits for content nobody may get
                else:
                    await self._reset(session)
                raise refusal
            if before_end is not None:
                try:
                    before_end()
                except Outcome:
                    session.close()  # it waits for content that may not go
                    raise
            session.writer.write(content(message))
        except _LOST as exc:
            raise _Stale(f"{type(exc).__name__}: {exc}") from None
        # the message is out: from here on a lost reply means the server may have taken it
        try:
            final = await session.reply(self.data_timeout)
        except _LOST as exc:
            session.close()
            raise no_final_reply(self._where(), type(exc).__name__) from None
        if final.code != 250:
            await self._reset(session)
            raise _classify(final, "message refused", recipient=False)
        return final

    @staticmethod
    async def _reset(session: Session) -> None:
        try:
            reply = await session.command("RSET")
            if reply.code != 250:
                session.close()
        except _LOST:
            session.close()  # not reused

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for session in idle:
            try:
                await asyncio.wait_for(session.command("QUIT"), 2)
            except _LOST:
                pass
            session.close()


class _Stale(Exception):
    pass
