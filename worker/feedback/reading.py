"""How a report is read before anyone judges it: the message repaired where a relay broke its
MIME, its parts (bounded against MIME bombs), header values and addresses made plain text, the
notification's own words cut from the enclosed original, and the per-recipient fields of a
delivery-status part (or of text written in that shape). parse.py decides what they mean."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

MAX_PARTS = 500
HEADER_LINE = re.compile(r"^(Received|Return-Path|DKIM-Signature|Message-ID|X-[\w-]+|MIME-Version|Date|From|"
                          r"Subject|To|Content-Type): ", re.I)
ORIGINAL_STARTS = re.compile(
    r"^\s*(?:-+ ?)?(?:[\w ]*original message|returned message|unsent message|this is a copy|below (?:this line )?is a"
    r" copy|[\w ]*copy of (?:the|your) (?:original )?message|the original message|message headers follow|"
    r"original message follows|headers of the original|included is (?:the|a) copy|the following is a copy|"
    r"the header of the original|undelivered message (?:headers )?follows?|------ This is a copy)", re.I | re.M)
STATUS_IN_TEXT = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
VALID = re.compile(r'("[^"\n]+"|[^@\s"<>(),;:]+)@[\w-]+(\.[\w-]+)+')


def repaired(msg: Message, raw: bytes) -> Message:
    """A multipart whose declared boundary never occurs but whose body has another (an edited
    copy, a broken relay): read again with the boundary the body uses."""
    boundary = msg.get_boundary() if msg.get_content_maintype() == "multipart" else None
    if not boundary or (msg.is_multipart() and msg.get_payload()):
        return msg
    blank = re.search(rb"\r?\n\r?\n", raw)
    if blank is None:
        return msg
    head, body = raw[:blank.start()], raw[blank.start():]
    found = re.search(rb"^--([^\s\x00]{1,70}?)\r?$", body, re.M)
    declared = boundary.encode("utf-8", "replace")
    if not found or declared not in head:
        return msg
    fixed = head.replace(declared, found.group(1), 1) + body
    return message_from_bytes(fixed, policy=policy.compat32)


def parts(msg: Message) -> list[tuple[Message, bool]] | None:
    """Every part, iteratively (no recursion), each with whether it is inside an enclosed
    message; None past MAX_PARTS."""
    out: list[tuple[Message, bool]] = []
    stack: list[tuple[Message, bool]] = [(msg, False)]
    while stack:
        part, inside = stack.pop()
        out.append((part, inside))
        if len(out) > MAX_PARTS:
            return None
        payload = part.get_payload()
        if isinstance(payload, list) and not part.get_content_type().endswith("delivery-status"):  # its blocks
            enclosed = inside or part.get_content_type() in ("message/rfc822", "message/global")
            stack.extend((p, enclosed) for p in reversed(payload) if isinstance(p, Message))
    return out


def header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else str(value)


def addr(value: str | None) -> str:
    """``rfc822; user@example.com`` or ``<user@example.com>`` -> ``user@example.com``."""
    if not value:
        return ""
    value = str(value)
    if ";" in value:
        value = value.split(";", 1)[1]
    found = getaddresses([value.strip()])
    address = found[0][1] if found and found[0][1] else value.strip()
    address = re.sub(r"^@[^:@]+:", "", address.strip().strip("<>").strip("'")).lower()  # an RFC 821 source route
    return address if VALID.fullmatch(address) else ""


def plain(value: object) -> str:
    return " ".join(str(value or "").split())


def decoded(part: Message, html: bool = False) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        data = str(part.get_payload() or "").encode("utf-8", "replace")
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if html:
        text = re.sub(r"(?s)<(script|style).*?</\1>", " ", text)
        text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", text, flags=re.I)
        text = re.sub(r"<[^>]+>", " ", text).replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ")
    return text.replace("\r\n", "\n")


def headers_of(part: Message) -> Message | None:
    """The original message's headers from a message/rfc822 or text/rfc822-headers part."""
    ctype = part.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return payload[0]
        if isinstance(payload, str):
            return HeaderParser().parsestr(payload)
    if ctype in ("text/rfc822-headers", "message/global-headers", "message/partial"):
        data = part.get_payload(decode=True) or b""
        return HeaderParser().parsestr(data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data))
    return None


def fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package splits delivery-status into blocks
        return [p for p in payload if isinstance(p, Message)]
    text = part.get_payload(decode=True) or b""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return field_blocks(text)


def field_blocks(text: str) -> list[Message]:
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [HeaderParser().parsestr(b.strip() + "\n") for b in blocks if b.strip()]


@dataclass(frozen=True)
class Notification:
    body: str  # what the reporting server wrote, the enclosed original cut off
    original: str  # the enclosed original's text when it came inline, not as a part


def notification(texts: list[str]) -> Notification:
    body = "\n\n".join(t for t in texts if t.strip())
    starts = (m for m in ORIGINAL_STARTS.finditer(body)  # "The original message was received at" is no copy
              if not re.match(r".{0,60}(was received at|was sent at)", body[m.start():m.start() + 120], re.I | re.S))
    m = next(starts, None)
    cut = m.start() if m else len(body)
    lines = body[:cut].split("\n")  # a header block after a blank line is the original inline
    for i in range(1, len(lines)):
        if not lines[i - 1].strip() and HEADER_LINE.match(lines[i]) and is_header_block(lines[i:i + 40]):
            cut = sum(len(x) + 1 for x in lines[:i])
            break
    rest = body[cut:]
    start = re.search(r"^[\w-]+: ", rest, re.M)
    return Notification(body[:cut], rest[start.start():] if start else "")


def is_header_block(lines: list[str]) -> bool:
    """A message's header block, not a notification quoting a Subject and a Date: Received,
    Return-Path or Message-ID among its fields, or four fields at least."""
    names = []
    for line in lines:
        m = re.match(r"^([\w-]+):", line)
        if m:
            names.append(m.group(1).lower())
        elif not line[:1] in (" ", "\t") or not line.strip():
            break
    return len(names) >= 4 or bool({"received", "return-path", "message-id", "dkim-signature"} & set(names))


def action_of(value: str, status: str) -> str:
    word = (value.strip().split() or [""])[0].strip("();,.").lower()
    if word in ("failed", "failure", "error", "fail", "bounced", "bounce", "rejected"):
        return "failed"
    if word in ("delayed", "delay", "deferred", "delivered", "relayed", "expanded"):
        return "delayed" if word in ("delay", "deferred") else word
    if status.startswith("2."):
        return "delivered"
    return "failed"


def status_of(*texts: str) -> str:
    for text in texts:
        m = STATUS_IN_TEXT.search(text)
        if m and m.group(1) not in ("5.0.0", "4.0.0"):
            return m.group(1)
    for text in texts:
        m = STATUS_IN_TEXT.search(text)
        if m:
            return m.group(1)
    return ""
