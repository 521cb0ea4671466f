"""SMTP delivery: one persistent connection reused across jobs, replies classified into outcomes.

The same session code serves the relay (one smarthost from settings) and direct MX delivery
(one session per MX host); only how hosts are chosen differs.
"""

from __future__ import annotations

import re
import select
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from producer.addresses import needs_smtputf8

from ..outcomes import Bounced, Deferred, Greylisted, InDoubt, Outage, Outcome
from ..settings import SmtpTarget

NETWORK_ERRORS = (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ssl.SSLError)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code (``5.1.1``) when the server gave one."""
        m = _ENHANCED.match(self.text)
        return m.group(0) if m and m.group(0)[0] == str(self.code)[0] else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?=\s|$)")
_DOT = re.compile(rb"^\.", re.MULTILINE)  # SMTP dot-stuffing


def _reply(code: int, message: bytes | str) -> Reply:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return Reply(code, " ".join(text.split()))


class SmtpSession:
    """A connection to one SMTP server. ``send`` returns the server's reply or raises an Outcome."""

    def __init__(self, target: SmtpTarget, *, timeout: float = 30.0, helo: str = "",
                 cafile: str = "", verify: bool = True, data_timeout: float = 600.0) -> None:
        """``timeout`` bounds each SMTP step; ``data_timeout`` the wait for the reply to the end
        of data, which RFC 5321 section 4.5.3.2.6 gives 10 minutes (a server may scan the message)."""
        self.target = target
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or None
        self.cafile = cafile or None
        self.verify = verify
        self._smtp: smtplib.SMTP | None = None
        self.connects = 0

    relay = False  # the smarthost every message goes through (RelayTransport): unreachable is an outage

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            # opportunistic TLS to MX hosts, as MTAs do: encrypted, not authenticated
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def connect(self) -> smtplib.SMTP:
        t = self.target
        self.connects += 1
        try:
            if t.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(t.host, t.port, local_hostname=self.helo,
                                                      timeout=self.timeout, context=self._tls_context())
            else:
                smtp = smtplib.SMTP(t.host, t.port, local_hostname=self.helo, timeout=self.timeout)
            smtp.ehlo_or_helo_if_needed()
            if t.tls in ("required", "opportunistic"):
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=self._tls_context())
                    smtp.ehlo()
                elif t.tls == "required":
                    smtp.close()
                    raise Deferred(f"{t.host}:{t.port} does not offer STARTTLS and it is required")
            if t.user:
                smtp.login(t.user, t.password)
        except smtplib.SMTPConnectError as exc:  # a 4xx/5xx greeting
            raise Deferred(f"{t.host}:{t.port} greeting refused", reply=str(_reply(exc.smtp_code, exc.smtp_error))) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise Deferred(f"{t.host}:{t.port} AUTH failed", reply=str(_reply(exc.smtp_code, exc.smtp_error))) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise Deferred(f"{t.host}:{t.port}: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            raise Deferred(f"{t.host}:{t.port} refused the session", reply=str(_reply(exc.smtp_code, exc.smtp_error))) from None
        except NETWORK_ERRORS as exc:
            # the relay unreachable is an outage (waited out, no retry spent); one MX host of
            # a recipient's domain unreachable is that delivery's own failure
            unreachable = Outage if self.relay else Deferred
            raise unreachable(f"cannot connect to {t.host}:{t.port}: {_describe(exc)}") from None
        self._smtp = smtp
        return smtp

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        """``before_end`` is called once the server said 354, just before the content and its
        end go; what it raises (an Outcome) abandons the transaction, nothing of it sent."""
        reused = self._smtp is not None
        try:
            return self._send_once(sender, recipients, message, touch, before_end)
        except _Stale:
            if not reused:
                raise Deferred(f"{self.target.host}:{self.target.port} dropped the connection") from None
        # a kept-alive connection the server closed meanwhile: one fresh try is not a retry storm
        try:
            return self._send_once(sender, recipients, message, touch, before_end)
        except _Stale as exc:
            raise Deferred(f"{self.target.host}:{self.target.port} dropped the connection: {exc}") from None

    def send_many(self, items: Sequence[tuple[str, Sequence[str], bytes]], touch: Callable[[], None],
                  done: Callable[[int, Reply | Exception], None],
                  before_end: Callable[[int], None] | None = None) -> None:
        """Several messages in one session, ``done(i, reply or Outcome)`` told of each as its
        reply comes. With PIPELINING a message's content, its end and the next message's
        envelope go in one write (RFC 2920 section 3.1 lets the content open a group): one
        round trip a message instead of two. ``before_end(i)``: as ``send``'s, per message."""
        smtp = self._smtp
        if smtp is None:
            try:
                smtp = self.connect()
            except Deferred as exc:
                for i in range(len(items)):
                    done(i, exc)
                return
        if not smtp.has_extn("pipelining") or len(items) < 2 or any(smtputf8_parameter(s, r) for s, r, _ in items):
            return self._one_by_one(items, 0, touch, done, before_end)  # (SMTPUTF8 is judged per message there)
        envelope_sent = False
        for i, (sender, recipients, message) in enumerate(items):
            body_going = False
            try:
                if not envelope_sent:
                    smtp.send(_envelope_lines(sender, recipients))
                envelope_sent = False
                mail = _reply(*smtp.getreply())
                rcpts = [_reply(*smtp.getreply()) for _ in recipients]
                data = _reply(*smtp.getreply())
                refusal = envelope_refusal(self.target.host, mail, rcpts, data)
                if refusal is not None:
                    self._end_transaction(smtp, data)
                    done(i, refusal)
                    if self._smtp is None:
                        return self._one_by_one(items, i + 1, touch, done, before_end)
                    continue
                touch()
                if before_end is not None:
                    try:
                        before_end(i)
                    except Outcome as exc:  # this one may not go: its transaction is abandoned
                        self.abandon()
                        done(i, exc)
                        return self._one_by_one(items, i + 1, touch, done, before_end)
                out = content(message)
                if i + 1 < len(items):
                    out += _envelope_lines(*items[i + 1][:2]).encode()
                    envelope_sent = True
                body_going = True
                smtp.send(out)
            except (smtplib.SMTPServerDisconnected, *NETWORK_ERRORS) as exc:
                self.close()
                if body_going:  # the content and its end may have left in part or in whole
                    done(i, InDoubt(f"{self.target.host}:{self.target.port}: connection lost while sending "
                                    f"the message ({_describe(exc)}); it may have been delivered"))
                    return self._one_by_one(items, i + 1, touch, done, before_end)
                # nothing of this message went: it and the rest go on a fresh connection
                return self._one_by_one(items, i, touch, done, before_end)
            try:
                final = self._final_reply(smtp, touch)
            except (smtplib.SMTPServerDisconnected, *NETWORK_ERRORS) as exc:
                self.close()
                done(i, no_final_reply(f"{self.target.host}:{self.target.port}", _describe(exc)))
                return self._one_by_one(items, i + 1, touch, done, before_end)
            done(i, final if final.code == 250 else _classify(final, "message refused", recipient=False))

    def _one_by_one(self, items: Sequence[tuple[str, Sequence[str], bytes]], start: int,
                    touch: Callable[[], None], done: Callable[[int, Reply | Exception], None],
                    before_end: Callable[[int], None] | None = None) -> None:
        for i in range(start, len(items)):
            try:
                done(i, self.send(*items[i], touch, None if before_end is None else lambda i=i: before_end(i)))
            except Outcome as exc:
                done(i, exc)

    def _send_once(self, sender: str, recipients: Sequence[str], message: bytes,
                   touch: Callable[[], None], before_end: Callable[[], None] | None = None) -> Reply:
        smtp = self._smtp or self.connect()
        refusal = smtputf8_refusal(self.target.host, smtp.has_extn("smtputf8"), sender, recipients)
        if refusal is not None:
            raise refusal
        touch()
        try:
            mail, rcpts, data = self._envelope(smtp, sender, recipients)
            refusal = envelope_refusal(self.target.host, mail, rcpts, data)
            if refusal is not None:
                self._end_transaction(smtp, data)
                raise refusal
            touch()
            if before_end is not None:
                try:
                    before_end()
                except Outcome:  # it may not go: the open DATA is abandoned with the connection
                    self.abandon()
                    raise
            smtp.send(content(message))
        except smtplib.SMTPServerDisconnected as exc:
            self.close()
            raise _Stale(str(exc)) from None
        except NETWORK_ERRORS as exc:
            self.close()
            raise _Stale(_describe(exc)) from None
        # the message is out: from here on a lost reply means the server may have taken it, and
        # sending it again could deliver a second copy
        try:
            final = self._final_reply(smtp, touch)
        except (smtplib.SMTPServerDisconnected, *NETWORK_ERRORS) as exc:
            self.close()
            raise no_final_reply(f"{self.target.host}:{self.target.port}", _describe(exc)) from None
        if final.code != 250:
            self._reset(smtp)
            raise _classify(final, "message refused", recipient=False)
        # a partial refusal of several recipients is reported in the reply; the accepted ones got it
        return final

    def _final_reply(self, smtp: smtplib.SMTP, touch: Callable[[], None]) -> Reply:
        """Wait up to ``data_timeout`` for the final reply in short slices, calling ``touch``
        between them so the job's reservation and claim outlive a slow server."""
        sock = smtp.sock
        deadline = time.monotonic() + self.data_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"{self.data_timeout:g}s passed")
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
            if pending or select.select([sock], [], [], min(left, 0.5))[0]:
                return _reply(*smtp.getreply())
            touch()

    @staticmethod
    def _envelope(smtp: smtplib.SMTP, sender: str, recipients: Sequence[str]) -> tuple[Reply, list[Reply], Reply]:
        """MAIL, RCPT..., DATA: in one write when the server offers PIPELINING (RFC 2920),
        which saves two round trips a message; one at a time otherwise."""
        if smtp.has_extn("pipelining"):
            smtp.send(_envelope_lines(sender, recipients).encode())
            mail = _reply(*smtp.getreply())
            rcpts = [_reply(*smtp.getreply()) for _ in recipients]
            return mail, rcpts, _reply(*smtp.getreply())
        mail = _reply(*smtp.mail(sender, ["SMTPUTF8"] if smtputf8_parameter(sender, recipients) else []))
        if mail.code != 250:
            return mail, [mail] * len(recipients), Reply(503, "not sent")
        rcpts = [_reply(*smtp.rcpt(r)) for r in recipients]
        if not any(r.code in (250, 251) for r in rcpts):
            return mail, rcpts, Reply(503, "not sent")
        return mail, rcpts, _reply(*smtp.docmd("DATA"))

    def _end_transaction(self, smtp: smtplib.SMTP, data: Reply) -> None:
        """After a refused envelope: RSET, or close when the server said 354 and waits for
        content that nobody may get."""
        if data.code == 354:
            self.close()
        else:
            self._reset(smtp)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except NETWORK_ERRORS:
            self.close()

    def abandon(self) -> None:
        """Drop the connection without a word: after a 354 anything written would be data."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (*NETWORK_ERRORS, smtplib.SMTPException):
                try:
                    smtp.close()
                except OSError:
                    pass


class _Stale(Exception):
    pass


def _envelope_lines(sender: str, recipients: Sequence[str]) -> str:
    return "".join([f"MAIL FROM:<{sender}>{smtputf8_parameter(sender, recipients)}\r\n",
                    *(f"RCPT TO:<{r}>\r\n" for r in recipients), "DATA\r\n"])


def smtputf8_parameter(sender: str, recipients: Sequence[str]) -> str:
    """MAIL FROM's `` SMTPUTF8`` when an address has a UTF-8 local part (RFC 6531), else ""."""
    return " SMTPUTF8" if needs_smtputf8(sender) or any(needs_smtputf8(r) for r in recipients) else ""


def smtputf8_refusal(host: str, offered: bool, sender: str, recipients: Sequence[str]) -> Bounced | None:
    """A server that does not offer SMTPUTF8 cannot take an address with a UTF-8 local part:
    the message is refused before its envelope is sent, naming the addresses and why."""
    if offered:
        return None
    needing = [a for a in (sender, *recipients) if needs_smtputf8(a)]
    if not needing:
        return None
    return Bounced(f"{host} does not offer SMTPUTF8 (RFC 6531), which {', '.join(needing)} "
                   f"need{'s' if len(needing) == 1 else ''} (a UTF-8 local part)", hard=False)


def envelope_refusal(host: str, mail: Reply, rcpts: Sequence[Reply], data: Reply) -> Outcome | None:
    """Why the content may not follow these replies to MAIL, RCPT... and DATA; None when it may.
    A 354 after a refused sender or no accepted recipient is a server that would take data for
    no one: the caller closes the connection rather than send it any."""
    accepted = any(r.code in (250, 251) for r in rcpts)
    if data.code == 354 and (mail.code != 250 or not accepted):
        return Deferred(f"{host} answered DATA without a valid envelope", reply=str(data))
    if mail.code != 250:
        return _classify(mail, f"MAIL FROM refused by {host}", recipient=False)
    if not accepted:
        return _classify(rcpts[0], "recipient refused", recipient=True)
    if data.code != 354:
        return _classify(data, "DATA refused", recipient=False)
    return None


def content(message: bytes) -> bytes:
    """The message as it goes after a 354: dot-stuffed, with its end."""
    body = _DOT.sub(b"..", message)
    return body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n")


def no_final_reply(where: str, why: str) -> InDoubt:
    """The content went and no reply came: the server may have taken it."""
    return InDoubt(f"{where}: no reply to the end of data ({why}); the message may have been delivered")


_GREYLIST = re.compile(r"gr[ae]y-?list", re.I)


def _classify(reply: Reply, what: str, *, recipient: bool) -> Outcome:
    if 400 <= reply.code < 500:
        if _GREYLIST.search(reply.text):  # retried after BEANMAIL_GREYLIST_DELAY, not the backoff
            return Greylisted(f"{what}: {reply}", reply=str(reply))
        return Deferred(f"{what}: {reply}", reply=str(reply))
    if 500 <= reply.code < 600:
        # a hard bounce suppresses the address: only when the address itself is refused
        # (RFC 3463 5.1.x, or no enhanced code at all), not for a policy or content refusal (5.7.1)
        hard = recipient and (not reply.enhanced or reply.enhanced.startswith("5.1."))
        return Bounced(f"{what}: {reply}", reply=str(reply), hard=hard)
    return Deferred(f"{what}: unexpected reply {reply}", reply=str(reply))


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
