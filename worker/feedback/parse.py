"""One parser for every report that comes back: a DSN (RFC 3464), an ARF complaint report
(RFC 5965), or a bounce in one of the older free forms, which flufl.bounce's detectors know.

It reads; it decides nothing about the store. What it finds: the failed recipients with
their action and status, the complaint's feedback type, and every address that may be our
VERP return path (the DSN's recipient, ARF's Original-Mail-From, the enclosed Return-Path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

from flufl.bounce import all_failures

# RFC 3463: 5.1.x bad destination address (no such user, no such domain, null MX), 5.2.1
# mailbox disabled; Postfix reports a domain with no address as 5.4.4
_HARD_STATUS = re.compile(r"^5\.(1\.\d+|2\.1|4\.4)$")
_NO_DOMAIN = re.compile(r"host or domain name not found|host not found|no such domain|domain (does not|doesn't) exist"
                        r"|nxdomain|null mx", re.I)
_STATUS_IN_TEXT = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")  # not-spam and auth-failure are no complaint


@dataclass(frozen=True)
class Failure:
    address: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # 5.1.1
    diagnostic: str = ""
    detected: bool = False  # by a detector without a status: its "permanent" is all we know
    permanent: bool | None = None  # a provider's own verdict (SES Permanent, Postmark HardBounce...)

    @property
    def classification(self) -> str:
        """hard | soft | delayed | ignored."""
        if self.action == "delayed":
            return "delayed"
        if self.action != "failed":
            return "ignored"
        if self.permanent is not None:
            return "hard" if self.permanent else "soft"
        if _HARD_STATUS.match(self.status) or _NO_DOMAIN.search(self.diagnostic) or (self.detected and not self.status):
            return "hard"
        return "soft"


@dataclass
class Report:
    kind: str  # dsn | arf | detector | webhook | unknown
    failures: list[Failure] = field(default_factory=list)
    feedback_type: str = ""  # arf
    complained: str = ""  # arf: the address that complained, when the provider says
    return_paths: list[str] = field(default_factory=list)  # candidates for our VERP address
    message_id: str = ""  # the original message's
    subject: str = ""

    @property
    def complaint(self) -> bool:
        return self.kind in ("arf", "webhook") and self.feedback_type in COMPLAINT_TYPES


def _addr(value: str | None) -> str:
    """``rfc822; user@example.com`` or ``<user@example.com>`` -> ``user@example.com``."""
    if not value:
        return ""
    value = str(value)
    if ";" in value:
        value = value.split(";", 1)[1]
    found = getaddresses([value.strip()])
    return found[0][1].strip().lower() if found and found[0][1] else value.strip().strip("<>").lower()


def _text(value: object) -> str:
    return " ".join(str(value or "").split())


def _headers_of(part: Message) -> Message | None:
    """The original message's headers from a message/rfc822 or text/rfc822-headers part."""
    ctype = part.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return payload[0]
        if isinstance(payload, str):
            return HeaderParser().parsestr(payload)
    if ctype in ("text/rfc822-headers", "message/global-headers"):
        data = part.get_payload(decode=True) or b""
        return HeaderParser().parsestr(data.decode("utf-8", "replace"))
    return None


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package splits delivery-status into blocks
        return payload
    text = part.get_payload(decode=True) or b""
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.decode("utf-8", "replace").strip())
    return [HeaderParser().parsestr(b) for b in blocks if b.strip()]


def parse(raw: bytes) -> Report:
    msg = message_from_bytes(raw, policy=policy.compat32)
    report = Report("unknown")
    top = [_addr(msg.get(h)) for h in ("Delivered-To", "X-Original-To", "To", "Envelope-To")]
    original: Message | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            report.kind = "dsn"
            blocks = _fields(part)
            for block in blocks[1:] if len(blocks) > 1 else blocks:
                address = _addr(block.get("Original-Recipient")) or _addr(block.get("Final-Recipient"))
                if not address:
                    continue
                diagnostic = _text(block.get("Diagnostic-Code"))
                diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic else diagnostic
                status = _text(block.get("Status"))
                m = _STATUS_IN_TEXT.search(status)
                report.failures.append(Failure(address, _text(block.get("Action")).lower(),
                                               m.group(1) if m else status, diagnostic))
        elif ctype == "message/feedback-report":
            report.kind = "arf"
            fields = _fields(part)
            block = fields[0] if fields else Message()
            report.feedback_type = _text(block.get("Feedback-Type")).lower()
            report.complained = _addr(block.get("Original-Rcpt-To"))
            if block.get("Original-Mail-From"):
                report.return_paths.append(_addr(block.get("Original-Mail-From")))
        elif original is None and part is not msg:
            original = _headers_of(part)
    if original is not None:
        report.return_paths.append(_addr(original.get("Return-Path")))
        report.message_id = _text(original.get("Message-ID"))
        report.subject = _text(original.get("Subject"))
        if report.kind == "arf" and not report.complained:
            report.complained = _addr(original.get("To"))
    if report.kind == "unknown":
        _detect(msg, report)
    report.return_paths = [a for a in dict.fromkeys([*top, *report.return_paths]) if a]
    return report


def _detect(msg: Message, report: Report) -> None:
    """The free-form bounces of older MTAs and providers, by flufl.bounce's detectors."""
    try:
        temporary, permanent = all_failures(message_from_bytes(msg.as_bytes(), policy=policy.compat32))
    except Exception:  # noqa: BLE001 - a detector choking on odd mail leaves it unrecognised
        return
    body = _body_text(msg)
    for address, action in [(a, "failed") for a in permanent] + [(a, "delayed") for a in temporary - permanent]:
        address = address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)
        m = _STATUS_IN_TEXT.search(body)
        report.failures.append(Failure(address.strip("<>").lower(), action, m.group(1) if m else "",
                                       _text(body)[:300], detected=True))
    if report.failures:
        report.kind = "detector"


def _body_text(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            if data:
                return data.decode("utf-8", "replace")
    return ""
