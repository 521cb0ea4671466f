"""SMTP on a blocking socket: the driver of the protocol core (``protocol.py``) for one
connection, kept across messages. ``SmtpSession`` serves the relay (one smarthost, or each relay
of a priority's list) and direct MX delivery (one session per MX host); ``aio.RelayPool`` is the
same conversations on an event loop. What is written and what each reply means is decided in
``protocol.py`` only.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Callable, Sequence

from ..outcomes import Deferred, Outage, Outcome
from ..settings import SmtpTarget
from .protocol import (_GREYLIST, CLOSE, Close, Conversation, Lost, Read, Reply, StartTls, Stale, Write,  # noqa: F401
                       classify, content, envelope_refusal, is_last_line, make_reply, no_final_reply, open_session,
                       parse_reply, pipelined, quit_session, smtputf8_parameter, smtputf8_refusal, step, transaction)

# the names this module had before the protocol core moved out (tests and older imports)
_classify, _reply = classify, make_reply
NETWORK_ERRORS = (OSError, ssl.SSLError, EOFError)
_MAX_LINE = 1 << 20  # a server that writes a mebibyte without a line end is no SMTP server


class _Connection:
    """One socket and its read buffer, performing a conversation's operations."""

    def __init__(self, sock: socket.socket, host: str, tls: Callable[[], ssl.SSLContext], timeout: float,
                 data_timeout: float) -> None:
        self.sock, self.host, self.tls = sock, host, tls
        self.data_timeout = data_timeout
        sock.settimeout(timeout)  # every read and write but the final reply's wait (``_line``)
        self.buffer = bytearray()
        self.closed = False

    def run(self, conversation: "Conversation | object", touch: Callable[[], None] | None = None) -> object:
        """Drive a conversation to its end: its return value, or what it raises. A broken
        connection is thrown into it as ``Lost`` where it happened."""
        value: Reply | None = None
        error: Lost | None = None
        while True:
            ended, op = step(conversation, value, error)
            if ended:
                return op
            value, error = None, None
            try:
                value = self._perform(op, touch)
            except Lost as exc:
                error = exc
            except NETWORK_ERRORS as exc:
                error = Lost(_describe(exc))

    def _perform(self, op: object, touch: Callable[[], None] | None) -> Reply | None:
        if self.closed and not isinstance(op, Close):
            raise Lost("the connection is closed")
        if isinstance(op, Write):
            self.sock.sendall(op.data)
            return None
        if isinstance(op, Read):
            return self._reply(op.final, touch)
        if isinstance(op, StartTls):
            self.buffer.clear()  # anything sent before the handshake is not to be trusted (RFC 3207)
            self.sock = self.tls().wrap_socket(self.sock, server_hostname=self.host)
            return None
        if isinstance(op, Close):
            self.close()
            return None
        raise TypeError(f"not an SMTP operation: {op!r}")

    def _reply(self, final: bool, touch: Callable[[], None] | None) -> Reply:
        lines = []
        while True:
            line = self._line(final, touch)
            lines.append(line)
            if is_last_line(line):
                return parse_reply(lines)

    def _line(self, final: bool, touch: Callable[[], None] | None) -> bytes:
        """One line. Each read is bounded by the socket's timeout (the step timeout); the reply to
        the end of data is waited for up to ``data_timeout`` in short slices with ``touch``
        between them, so a job's reservation and claim outlive a slow server."""
        deadline = time.monotonic() + self.data_timeout if final else 0.0
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > _MAX_LINE:
                raise Lost("a reply line over a mebibyte")
            if final and not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Lost("timed out")
                if not select.select([self.sock], [], [], min(left, 0.5))[0]:
                    if touch is not None:
                        touch()
                    continue
            data = self.sock.recv(65536)
            if not data:
                raise Lost("the server closed the connection")
            self.buffer += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class SmtpSession:
    """A connection to one SMTP server. ``send`` returns the server's reply or raises an Outcome."""

    def __init__(self, target: SmtpTarget, *, timeout: float = 30.0, helo: str = "",
                 cafile: str = "", verify: bool = True, data_timeout: float = 600.0) -> None:
        """``timeout`` bounds each SMTP step; ``data_timeout`` the wait for the reply to the end
        of data, which RFC 5321 section 4.5.3.2.6 gives 10 minutes (a server may scan the message)."""
        self.target = target
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or socket.getfqdn()
        self.cafile = cafile or None
        self.verify = verify
        self._context: ssl.SSLContext | None = None
        self._conn: _Connection | None = None
        self.extensions: set[str] = set()  # what the server offered in its EHLO
        self.connects = 0

    relay = False  # the smarthost every message goes through (RelayTransport): unreachable is an outage

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def where(self) -> str:
        return f"{self.target.host}:{self.target.port}"

    def _tls_context(self) -> ssl.SSLContext:
        """Made once per session, when the server first wants TLS."""
        if self._context is None:
            context = ssl.create_default_context(cafile=self.cafile)
            if not self.verify:  # opportunistic TLS to MX hosts, as MTAs do: encrypted, not authenticated
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context

    def connect(self) -> None:
        """Open the session (greeting, EHLO, STARTTLS, AUTH). The relay unreachable is an Outage
        (waited out, no retry spent); one MX host of a recipient's domain unreachable is that
        delivery's own failure (Deferred); a refusal of a step is a Deferred naming it."""
        t = self.target
        self.connects += 1
        unreachable = Outage if self.relay else Deferred
        try:
            sock = socket.create_connection((t.host, t.port), timeout=self.timeout)
            if t.tls == "ssl":
                sock = self._tls_context().wrap_socket(sock, server_hostname=t.host)
        except NETWORK_ERRORS as exc:
            raise unreachable(f"cannot connect to {self.where}: {_describe(exc)}") from None
        conn = _Connection(sock, t.host, self._tls_context, self.timeout, self.data_timeout)  # (sets the timeout)
        try:
            self.extensions = conn.run(open_session(t, self.helo, self.where))  # type: ignore[assignment]
        except Outcome:
            conn.close()
            raise
        except Lost as exc:
            conn.close()
            raise unreachable(f"cannot connect to {self.where}: {exc}") from None
        self._conn = conn

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        """``before_end`` is called once the server said 354, just before the content and its
        end go; what it raises (an Outcome) abandons the transaction, nothing of it sent."""
        reused = self._conn is not None
        try:
            return self._send_once(sender, recipients, message, touch, before_end)
        except Stale:
            if not reused:
                raise Deferred(f"{self.where} dropped the connection") from None
        # a kept-alive connection the server closed meanwhile: one fresh try is not a retry storm
        try:
            return self._send_once(sender, recipients, message, touch, before_end)
        except Stale as exc:
            raise Deferred(f"{self.where} dropped the connection: {exc}") from None

    def _send_once(self, sender: str, recipients: Sequence[str], message: bytes,
                   touch: Callable[[], None], before_end: Callable[[], None] | None) -> Reply:
        if self._conn is None:
            self.connect()
        conn = self._conn
        assert conn is not None
        touch()
        try:
            return conn.run(transaction(self.where, self.extensions, sender, recipients, message, before_end),
                            touch)  # type: ignore[return-value]
        except Stale:
            conn.close()
            raise
        finally:
            if conn.closed:
                self._conn = None

    def send_many(self, items: Sequence[tuple[str, Sequence[str], bytes]], touch: Callable[[], None],
                  done: Callable[[int, Reply | Exception], None],
                  before_end: Callable[[int], None] | None = None) -> None:
        """Several messages in one session, ``done(i, reply or Outcome)`` told of each as its
        reply comes; pipelined (``protocol.pipelined``) where the server offers PIPELINING.
        ``before_end(i)``: as ``send``'s, per message."""
        if self._conn is None:
            try:
                self.connect()
            except Deferred as exc:
                for i in range(len(items)):
                    done(i, exc)
                return
        if "PIPELINING" not in self.extensions or len(items) < 2 or \
                any(smtputf8_parameter(s, r) for s, r, _ in items):
            return self._one_by_one(items, 0, touch, done, before_end)  # (SMTPUTF8 is judged per message there)
        conn = self._conn
        assert conn is not None
        try:
            rest: int = conn.run(pipelined(self.where, self.extensions, items, done, before_end), touch)  # type: ignore[assignment]
        finally:
            if conn.closed:
                self._conn = None
        self._one_by_one(items, rest, touch, done, before_end)

    def _one_by_one(self, items: Sequence[tuple[str, Sequence[str], bytes]], start: int,
                    touch: Callable[[], None], done: Callable[[int, Reply | Exception], None],
                    before_end: Callable[[int], None] | None = None) -> None:
        for i in range(start, len(items)):
            try:
                done(i, self.send(*items[i], touch, None if before_end is None else lambda i=i: before_end(i)))
            except Outcome as exc:
                done(i, exc)

    def abandon(self) -> None:
        """Drop the connection without a word: after a 354 anything written would be data."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """QUIT (briefly: a server that does not answer is closed on) and close."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.sock.settimeout(min(self.timeout, 2.0))
            except OSError:
                pass
            conn.run(quit_session())
            conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RelayTransport:
    """Everything through one smarthost (BEANMAIL_SMTP_URL)."""

    def __init__(self, target: SmtpTarget, *, timeout: float, helo: str = "", cafile: str = "",
                 data_timeout: float = 600.0) -> None:
        self.session = SmtpSession(target, timeout=timeout, helo=helo, cafile=cafile, data_timeout=data_timeout)
        self.session.relay = True

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        return self.session.send(sender, recipients, message, touch, before_end)

    def send_many(self, items: Sequence[tuple[str, Sequence[str], bytes]], touch: Callable[[], None],
                  done: Callable[[int, Reply | Exception], None],
                  before_end: Callable[[int], None] | None = None) -> None:
        self.session.send_many(items, touch, done, before_end)

    def close(self) -> None:
        self.session.close()
