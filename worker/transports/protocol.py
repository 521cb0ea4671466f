"""The SMTP protocol, once, without I/O: what to write, what each reply means, and how a session
and a transaction go (RFC 5321, PIPELINING RFC 2920, STARTTLS RFC 3207, AUTH RFC 4954, SMTPUTF8
RFC 6531).

A conversation is a generator yielding operations (``Write``, ``READ``, ``READ_FINAL``,
``START_TLS``, ``CLOSE``) and receiving each read's ``Reply``; a driver performs them on a
connection: ``smtp.SmtpSession`` on a blocking socket, ``aio.RelayPool`` on asyncio streams. A
connection lost while an operation runs is thrown into the generator as ``Lost`` at that yield,
so the decisions that depend on where it broke (before the content: nothing sent, try again;
after it: in doubt) are made here and nowhere else, and can be tested with a fake driver.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence, Union

from producer.addresses import needs_smtputf8

from ..outcomes import Bounced, Deferred, Greylisted, InDoubt, Outcome
from ..settings import SmtpTarget


@dataclass(frozen=True)
class Reply:
    code: int
    text: str
    lines: tuple[bytes, ...] = field(default=(), compare=False, repr=False)  # as received, for EHLO's keywords

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code (``5.1.1``) when the server gave one."""
        m = _ENHANCED.match(self.text)
        return m.group(0) if m and m.group(0)[0] == str(self.code)[0] else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?=\s|$)")
_DOT = re.compile(rb"^\.", re.MULTILINE)  # dot-stuffing
_GREYLIST = re.compile(r"gr[ae]y-?list", re.I)


def make_reply(code: int, message: bytes | str) -> Reply:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return Reply(code, " ".join(text.split()))


def is_last_line(line: bytes) -> bool:
    """Whether a reply line ends its reply (``250 ok``), not continues it (``250-ok``)."""
    return line[3:4] != b"-"


def parse_reply(lines: Sequence[bytes]) -> Reply:
    """One reply from its lines (each ending in LF); ``NotSmtp`` for anything else."""
    try:
        code = int(lines[-1][:3])
    except ValueError:
        raise NotSmtp(f"not an SMTP reply: {lines[-1][:40]!r}") from None
    reply = make_reply(code, b" ".join(line[4:].strip() for line in lines))
    return Reply(reply.code, reply.text, tuple(lines))


def extensions(ehlo: Reply) -> set[str]:
    """The EHLO keywords a server offers (its first line is its greeting, not one)."""
    return {ln[4:].split(b" ")[0].strip().decode("ascii", "replace").upper() for ln in ehlo.lines[1:]}


# -- what a reply means ---------------------------------------------------------------------------

def classify(reply: Reply, what: str, *, recipient: bool) -> Outcome:
    """A refusal as an outcome: 4xx defers (greylisting its own kind), 5xx bounces, hard only
    when the address itself is refused (RFC 3463 5.1.x, or no enhanced code at all), not for a
    policy or content refusal (5.7.1)."""
    if 400 <= reply.code < 500:
        if _GREYLIST.search(reply.text):  # retried after BEANMAIL_GREYLIST_DELAY, not the backoff
            return Greylisted(f"{what}: {reply}", reply=str(reply))
        return Deferred(f"{what}: {reply}", reply=str(reply))
    if 500 <= reply.code < 600:
        hard = recipient and (not reply.enhanced or reply.enhanced.startswith("5.1."))
        return Bounced(f"{what}: {reply}", reply=str(reply), hard=hard)
    return Deferred(f"{what}: unexpected reply {reply}", reply=str(reply))


def envelope_refusal(host: str, mail: Reply, rcpts: Sequence[Reply], data: Reply) -> Outcome | None:
    """Why the content may not follow these replies to MAIL, RCPT... and DATA; None when it may.
    A 354 after a refused sender or no accepted recipient is a server that would take data for
    no one: the session is closed rather than sent any."""
    accepted = any(r.code in (250, 251) for r in rcpts)
    if data.code == 354 and (mail.code != 250 or not accepted):
        return Deferred(f"{host} answered DATA without a valid envelope", reply=str(data))
    if mail.code != 250:
        return classify(mail, f"MAIL FROM refused by {host}", recipient=False)
    if not accepted:
        return classify(rcpts[0], "recipient refused", recipient=True)
    if data.code != 354:
        return classify(data, "DATA refused", recipient=False)
    return None


def no_final_reply(where: str, why: str) -> InDoubt:
    """The content went and no reply came: the server may have taken it."""
    return InDoubt(f"{where}: no reply to the end of data ({why}); the message may have been delivered")


def smtputf8_parameter(sender: str, recipients: Sequence[str]) -> str:
    """MAIL FROM's `` SMTPUTF8`` when an address has a UTF-8 local part (RFC 6531), else ""."""
    return " SMTPUTF8" if needs_smtputf8(sender) or any(needs_smtputf8(r) for r in recipients) else ""


def smtputf8_refusal(host: str, offered: bool, sender: str, recipients: Sequence[str]) -> Bounced | None:
    """A server that does not offer SMTPUTF8 cannot take an address with a UTF-8 local part:
    refused before the envelope is sent, naming the addresses and why."""
    if offered:
        return None
    needing = [a for a in (sender, *recipients) if needs_smtputf8(a)]
    if not needing:
        return None
    return Bounced(f"{host} does not offer SMTPUTF8 (RFC 6531), which {', '.join(needing)} "
                   f"need{'s' if len(needing) == 1 else ''} (a UTF-8 local part)", hard=False)


def envelope_lines(sender: str, recipients: Sequence[str]) -> bytes:
    return "".join([f"MAIL FROM:<{sender}>{smtputf8_parameter(sender, recipients)}\r\n",
                    *(f"RCPT TO:<{r}>\r\n" for r in recipients), "DATA\r\n"]).encode()


def content(message: bytes) -> bytes:
    """The message as it goes after a 354: dot-stuffed, with its end."""
    body = _DOT.sub(b"..", message)
    return body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n")


# -- the operations a driver performs -------------------------------------------------------------

@dataclass(frozen=True)
class Write:
    data: bytes


@dataclass(frozen=True)
class Read:
    final: bool = False  # the reply to the end of data: waited for up to the data timeout


class StartTls:
    """Upgrade the connection (after the server's 220 to STARTTLS)."""


class Close:
    """Drop the connection without a word (after a 354, anything written would be data)."""


READ, READ_FINAL, START_TLS, CLOSE = Read(), Read(final=True), StartTls(), Close()
Op = Union[Write, Read, StartTls, Close]
Conversation = Generator[Op, "Reply | None", "Reply"]


class Lost(Exception):
    """The connection broke (closed, reset, timed out) during an operation; thrown in by the driver."""


class NotSmtp(Lost):
    """The server wrote something that is no SMTP reply: the session is as good as lost."""


class Stale(Exception):
    """The connection was lost before anything of the message went: a fresh one may take it."""


def step(conversation: Any, value: "Reply | None", error: Lost | None) -> tuple[bool, Any]:
    """Give a conversation what its last operation gave (or throw in how the connection broke):
    ``(False, the next operation)``, or ``(True, its result)`` once it has ended. The drivers'
    loops are this and their own I/O."""
    try:
        return False, conversation.throw(error) if error is not None else conversation.send(value)
    except StopIteration as stop:
        return True, stop.value


# -- conversations --------------------------------------------------------------------------------

def command(line: str) -> Generator[Op, Reply, Reply]:
    yield Write(line.encode() + b"\r\n")
    reply = yield READ
    return reply


def open_session(target: SmtpTarget, helo: str, where: str) -> Generator[Op, Reply, set[str]]:
    """Greeting, EHLO (HELO when refused), STARTTLS and AUTH as the target wants: the extensions
    the session may use. A refusal anywhere is a Deferred naming the step."""
    greeting = yield READ
    if greeting.code != 220:
        raise Deferred(f"{where} greeting refused", reply=str(greeting))
    hello, offered = yield from _hello(helo)
    if "STARTTLS" in offered and target.tls in ("required", "opportunistic"):
        started = yield from command("STARTTLS")
        if started.code != 220:
            raise Deferred(f"{where} refused STARTTLS", reply=str(started))
        yield START_TLS
        hello, offered = yield from _hello(helo)
    elif target.tls == "required":
        raise Deferred(f"{where} does not offer STARTTLS and it is required")
    if hello.code // 100 != 2:
        raise Deferred(f"{where} refused the session", reply=str(hello))
    if target.user:
        auth = yield from _authenticate(target, auth_mechanisms(hello))
        if auth.code != 235:
            raise Deferred(f"{where} AUTH failed", reply=str(auth))
    return offered


def _hello(helo: str) -> Generator[Op, Reply, tuple[Reply, set[str]]]:
    ehlo = yield from command(f"EHLO {helo}")
    if ehlo.code == 250:
        return ehlo, extensions(ehlo)
    hello = yield from command(f"HELO {helo}")  # a server that knows no ESMTP
    return hello, set()


def auth_mechanisms(ehlo: Reply) -> set[str]:
    """The SASL mechanisms an EHLO reply offers (``250-AUTH PLAIN LOGIN``)."""
    for line in ehlo.lines[1:]:
        words = line[4:].decode("ascii", "replace").upper().replace("=", " ").split()
        if words and words[0] == "AUTH":
            return set(words[1:])
    return set()


def _authenticate(target: SmtpTarget, mechanisms: set[str]) -> Generator[Op, Reply, Reply]:
    """AUTH PLAIN, or LOGIN where a server offers only that (RFC 4954)."""
    if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
        secret = base64.b64encode(f"\0{target.user}\0{target.password}".encode()).decode()
        return (yield from command(f"AUTH PLAIN {secret}"))
    reply = yield from command("AUTH LOGIN")
    for value in (target.user, target.password):
        if reply.code != 334:
            return reply
        reply = yield from command(base64.b64encode(value.encode()).decode())
    return reply


def reset() -> Generator[Op, Reply, None]:
    """RSET after a refusal, so the session serves the next message; closed when that fails."""
    try:
        reply = yield from command("RSET")
    except Lost:
        yield CLOSE
        return
    if reply.code != 250:
        yield CLOSE


def transaction(where: str, offered: set[str], sender: str, recipients: Sequence[str], message: bytes,
                before_end: Callable[[], None] | None = None) -> Conversation:
    """One message: MAIL, RCPT..., DATA (in one write with PIPELINING), the content and the
    reply to its end. Raises the refusal's Outcome, ``Stale`` when the connection broke before
    any of the content went, InDoubt when it broke after. ``before_end`` is called once the
    server said 354; what it raises (an Outcome) abandons the transaction with its connection."""
    host = where.rsplit(":", 1)[0]
    refusal = smtputf8_refusal(where, "SMTPUTF8" in offered, sender, recipients)
    if refusal is not None:
        raise refusal
    try:
        if "PIPELINING" in offered:
            yield Write(envelope_lines(sender, recipients))
            mail = yield READ
            rcpts = []
            for _ in recipients:
                rcpts.append((yield READ))
            data = yield READ
        else:
            mail = yield from command(f"MAIL FROM:<{sender}>{smtputf8_parameter(sender, recipients)}")
            rcpts, data = [], Reply(503, "not sent")
            if mail.code == 250:
                for r in recipients:
                    rcpts.append((yield from command(f"RCPT TO:<{r}>")))
                if any(r.code in (250, 251) for r in rcpts):
                    data = yield from command("DATA")
        if mail.code == 421:  # the server ended the session (after its last message, say)
            raise Stale(f"421 {mail.text}")
        refusal = envelope_refusal(host, mail, rcpts, data)
        if refusal is not None:
            if data.code == 354:
                yield CLOSE  # it waits for content nobody may get
            else:
                yield from reset()
            raise refusal
        if before_end is not None:
            try:
                before_end()
            except Outcome:
                yield CLOSE
                raise
        yield Write(content(message))
    except Lost as exc:
        raise Stale(str(exc) or type(exc).__name__) from None
    return (yield from final_reply(where))


def final_reply(where: str) -> Conversation:
    """The reply to the end of data: from here on a lost connection means the server may have
    taken the message, and sending it again could deliver a second copy."""
    try:
        final = yield READ_FINAL
    except Lost as exc:
        yield CLOSE
        raise no_final_reply(where, str(exc) or type(exc).__name__) from None
    if final.code != 250:
        yield from reset()
        raise classify(final, "message refused", recipient=False)
    return final  # a partial refusal of several recipients is in the reply; the accepted ones got it


Item = tuple[str, Sequence[str], bytes]


def pipelined(where: str, offered: set[str], items: Sequence[Item], done: Callable[[int, "Reply | Exception"], None],
              before_end: Callable[[int], None] | None = None) -> Generator[Op, Reply, int]:
    """Several messages in one session with PIPELINING, a message's content, its end and the
    next message's envelope in one write (RFC 2920 section 3.1 lets the content open a group):
    one round trip a message instead of two. ``done(i, reply or Outcome)`` as each ends.
    Returns the index from which the rest must go one by one (a broken or closed session,
    a message held back): ``len(items)`` when all went."""
    host = where.rsplit(":", 1)[0]
    envelope_sent = False
    for i, (sender, recipients, message) in enumerate(items):
        body_going = False
        try:
            if not envelope_sent:
                yield Write(envelope_lines(sender, recipients))
            envelope_sent = False
            mail = yield READ
            rcpts = []
            for _ in recipients:
                rcpts.append((yield READ))
            data = yield READ
            refusal = envelope_refusal(host, mail, rcpts, data)
            if refusal is not None:
                closed = data.code == 354
                if closed:
                    yield CLOSE
                else:
                    closed = not (yield from _reset_kept())
                done(i, refusal)
                if closed:
                    return i + 1
                continue
            if before_end is not None:
                try:
                    before_end(i)
                except Outcome as exc:  # this one may not go: its transaction is abandoned
                    yield CLOSE
                    done(i, exc)
                    return i + 1
            out = content(message)
            if i + 1 < len(items):
                out += envelope_lines(*items[i + 1][:2])
                envelope_sent = True
            body_going = True
            yield Write(out)
        except Lost as exc:
            yield CLOSE
            if body_going:  # the content and its end may have left in part or in whole
                done(i, InDoubt(f"{where}: connection lost while sending the message ({exc or type(exc).__name__});"
                                " it may have been delivered"))
                return i + 1
            return i  # nothing of this message went: it and the rest go on a fresh connection
        try:
            final = yield READ_FINAL
        except Lost as exc:
            yield CLOSE
            done(i, no_final_reply(where, str(exc) or type(exc).__name__))
            return i + 1
        done(i, final if final.code == 250 else classify(final, "message refused", recipient=False))
    return len(items)


def _reset_kept() -> Generator[Op, Reply, bool]:
    """RSET; whether the session is still usable."""
    try:
        reply = yield from command("RSET")
    except Lost:
        yield CLOSE
        return False
    if reply.code != 250:
        yield CLOSE
        return False
    return True


def quit_session() -> Generator[Op, Reply, None]:
    try:
        yield from command("QUIT")
    except Lost:
        pass
    yield CLOSE
