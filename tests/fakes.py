"""In-memory fakes for the unit tier, behind the same interfaces as the real parts: a scripted
SMTP server that drives the protocol core (worker/transports/protocol.py) without a socket, and a
transport made of it for the pipeline."""

from __future__ import annotations

from typing import Callable, Sequence

from worker.transports.protocol import Close, Lost, Read, Reply, StartTls, Stale, Write, parse_reply, step, transaction

WHERE = "mx.example:25"
LOST = object()  # in a script: the connection breaks at this read


class Server:
    """Replies in order (b"250 ok" lines, or LOST); records what the client wrote and did."""

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)
        self.written: list[bytes] = []
        self.events: list[str] = []

    def run(self, conversation):  # noqa: ANN001, ANN201 - a generator of protocol operations
        value, error = None, None
        while True:
            ended, op = step(conversation, value, error)
            if ended:
                return op
            value, error = None, None
            if isinstance(op, Write):
                self.written.append(op.data)
            elif isinstance(op, Read):
                reply = self.replies.pop(0)
                if reply is LOST:
                    error = Lost("reset by peer")
                else:
                    lines = [line + b"\r\n" for line in reply.split(b"\n")]  # type: ignore[union-attr]
                    value = parse_reply(lines)
                    self.events.append(f"read{'-final' if op.final else ''} {value.code}")
            elif isinstance(op, StartTls):
                self.events.append("starttls")
            elif isinstance(op, Close):
                self.events.append("close")

    @property
    def commands(self) -> list[str]:
        return [line for chunk in self.written for line in chunk.decode(errors="replace").split("\r\n")
                if line and line.split(" ")[0].split(":")[0].isupper()]


class ScriptedTransport:
    """The pipeline's transport (``send``) speaking SMTP through the real protocol core to a
    scripted server: each message's replies from ``scripts`` in turn (the default: accepted), or
    an exception a script stands for (the relay unreachable: ``Outage``). A connection lost
    before the content (``Stale``) is the relay dropping, as the real drivers report it."""

    ACCEPT = (b"250 ok", b"250 ok", b"354 go", b"250 2.0.0 queued")

    def __init__(self, *scripts: "Sequence[object] | BaseException", offered: set[str] | None = None) -> None:
        self.scripts = list(scripts)
        self.offered = offered if offered is not None else {"PIPELINING", "8BITMIME"}
        self.servers: list[Server] = []

    def send(self, sender: str, recipients: Sequence[str], message: bytes, touch: Callable[[], None] = lambda: None,
             before_end: Callable[[], None] | None = None) -> Reply:
        script = self.scripts.pop(0) if self.scripts else self.ACCEPT
        if isinstance(script, BaseException):
            raise script
        server = Server(*script)
        self.servers.append(server)
        try:
            return server.run(transaction(WHERE, self.offered, sender, recipients, message, before_end))
        except Stale as exc:
            from worker.outcomes import Deferred
            raise Deferred(f"{WHERE} dropped the connection: {exc}") from None

    @property
    def messages(self) -> list[bytes]:
        """The content of every message the server took (its end of data reached it)."""
        return [w for s in self.servers for w in s.written if w.endswith(b"\r\n.\r\n")]

    def close(self) -> None:
        pass
