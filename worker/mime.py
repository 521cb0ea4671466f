"""Rendered parts to RFC 5322 bytes: RFC 2047 headers and UTF-8 bodies, independent of the
process locale (supervisord starts programs with a bare environment).

Written out directly rather than through ``email.message.EmailMessage``, which spends about
2 ms a message here on header objects the worker never reads again. Every form this module
writes is parsed back with the ``email`` parser in the tests.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate, parseaddr
from typing import Mapping

from producer.addresses import AddressError, parse_mailbox
from producer.envelope import Recipient

from .outcomes import Poison
from .render import Rendered
from .validate import check_header_value

CRLF = "\r\n"
# RFC 5322 atext plus space: a display name made only of these needs no quoting
_ATOM_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*$")
_sequence = itertools.count(1)  # next() on it is atomic: worker threads share it


@dataclass(frozen=True)
class Sender:
    name: str
    addr_spec: str

    @property
    def domain(self) -> str:
        return self.addr_spec.rpartition("@")[2] or "localhost"


def sender_address(from_addr: str) -> Sender:
    """The configured From, its address as producers' addresses are (domain in A-labels)."""
    try:
        mailbox = parse_mailbox(from_addr)
    except AddressError:  # the settings refuse such a From at start; a bare parse for the rest
        name, address = parseaddr(from_addr)
        return Sender(name, address)
    return Sender(mailbox.name, mailbox.address)


def encode_words(text: str) -> str:
    """RFC 2047 B encoded-words of at most 75 characters, never splitting a UTF-8 character."""
    if len(text.encode()) <= 45:  # one word: the common short subject or name
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode('ascii')}?="
    words: list[str] = []
    chunk = ""
    for ch in text:
        if len((chunk + ch).encode()) > 45:  # 45 bytes -> 60 base64 characters -> 72 with the frame
            words.append(chunk)
            chunk = ""
        chunk += ch
    words.append(chunk)
    return " ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words)


def format_address(name: str, address: str) -> str:
    if not name:
        return address
    if not name.isascii() or "=?" in name:
        return f"{encode_words(name)} <{address}>"
    if _ATOM_PHRASE.match(name):
        return f"{name} <{address}>"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def header(name: str, value: str, width: int = 78, *, address: bool = False) -> str:
    """One header line, folded at spaces; unstructured non-ASCII text as encoded-words (which
    fold at their own spaces); an ``address`` header comes already encoded by format_address.
    Long unbreakable ASCII tokens such as unsubscribe URLs stay intact."""
    check_header_value(name, value)
    if len(name) + len(value) + 2 <= width and value.isascii() and "=?" not in value:
        return f"{name}: {value}"  # the common case: one short plain line
    if not address and (not value.isascii() or "=?" in value):  # text that merely looks encoded must be, too
        value = encode_words(value)
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > width and line not in ("", f"{name}:"):
            lines.append(line)
            line = ""
        line += f" {word}"
    lines.append(line)
    if any(len(x) > 998 for x in lines):
        raise Poison(f"header {name} has a word longer than a mail line may be (998)")
    return CRLF.join(lines)


def _part(text: str, subtype: str) -> tuple[str, str]:
    """Content headers and the encoded body of one text part, CRLF line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and all(len(x) <= 998 for x in text.split("\n")):
        cte, body = "7bit", text.replace("\n", CRLF)
    else:
        non_ascii = len(text) - len(text.encode("ascii", "ignore"))
        if non_ascii * 4 < len(text):
            cte = "quoted-printable"
            body = binascii.b2a_qp(text.encode()).decode("ascii").replace("\n", CRLF)
        else:
            cte = "base64"
            b64 = base64.b64encode(text.replace("\n", CRLF).encode()).decode("ascii")
            body = CRLF.join(b64[i:i + 76] for i in range(0, len(b64), 76))
    head = f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}Content-Transfer-Encoding: {cte}'
    return head, body


def date_header(now: float) -> str:
    # formatdate is locale-independent; "-0000" would mean "zone unknown", so say UTC
    return formatdate(now, localtime=False)[:-5] + "+0000"


def new_message_id(domain: str) -> str:
    return f"<{time.time_ns():x}.{os.getpid():x}.{next(_sequence):x}.{secrets.token_hex(4)}@{domain}>"


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Header layers merged as mail readers see names, case-insensitively: a later layer's
    header replaces an earlier one's (an application's Precedence replaces ours), never a
    second copy. Keeps the first spelling's position and the last value."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, value)
    return dict(merged.values())


DEFAULT_HEADERS = {"Auto-Submitted": "auto-generated"}  # RFC 3834: no vacation replies to us


def build(rendered: Rendered, sender: Sender, recipient: Recipient,
          headers: Mapping[str, str] = {}, *, message_id: str | None = None,
          now: float | None = None) -> bytes:
    """``headers``: extra headers, already merged (``merge_headers``); they replace the
    defaults above, never the structural ones (validation refuses those)."""
    lines = [
        header("From", format_address(sender.name, sender.addr_spec), address=True),
        header("To", format_address(recipient.name, recipient.address), address=True),
        header("Subject", rendered.subject),
        f"Date: {date_header(now if now is not None else time.time())}",
        f"Message-ID: {message_id or new_message_id(sender.domain)}",
    ]
    for name, value in merge_headers(DEFAULT_HEADERS, headers).items():
        if name.lower() == "reply-to":
            lines.append(header(name, _reply_to(value), address=True))
        else:
            lines.append(header(name, value))
    lines.append("MIME-Version: 1.0")
    text_head, text_body = _part(rendered.text, "plain")
    if rendered.html is None:
        lines.append(text_head)
        return (CRLF.join(lines) + CRLF + CRLF + text_body).encode()  # UTF-8 only in an EAI address (RFC 6532)
    html_head, html_body = _part(rendered.html, "html")
    boundary = f"=_{secrets.token_hex(12)}"
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    out = [CRLF.join(lines), "", f"--{boundary}", text_head, "", text_body, f"--{boundary}",
           html_head, "", html_body, f"--{boundary}--", ""]
    return CRLF.join(out).encode()


def _reply_to(value: str) -> str:
    try:
        mailbox = parse_mailbox(value)  # the producers' own judgement (producer.addresses)
    except AddressError as exc:
        raise Poison(f"Reply-To {value!r} is not an address: {exc.reason}") from None
    if mailbox.smtputf8:
        raise Poison(f"Reply-To {value!r}: a UTF-8 local part is not accepted in Reply-To")
    return format_address(mailbox.name, mailbox.address)
