"""Checks that run before any rendering: addresses, header values, expiry.

Recipients and senders are checked for syntax only, by ``producer.addresses`` (the producers'
own judgement): special-use domains (``localhost``, ``.test``, ``.example``, ``.invalid``) are
real in development and tests, and whether a domain takes mail is for DNS and the receiving
server to say. Every error names the field it is about.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

from producer.addresses import AddressError, check_address
from producer.envelope import Envelope, Recipient

from .outcomes import Poison, Skipped

# Headers a job may set; everything structural (From, To, Cc, Content-*, MIME-Version, ...) is ours.
ALLOWED_HEADERS = {"reply-to", "in-reply-to", "references", "list-id", "list-unsubscribe",
                   "list-unsubscribe-post", "precedence", "auto-submitted", "keywords"}
# every control character but tab: CR and LF split headers; the others (\x0b, \x0c, \x1c-\x1e
# are line breaks to str.splitlines) corrupt them in readers that honour them
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_header_value(where: str, value: str) -> None:
    if _CONTROL.search(value):
        raise Poison(f"header injection: {where} contains a control character (CR, LF, NUL or another)")


def normalize_address(address: str, field: str = "recipient") -> str:
    """The address as it goes into MAIL FROM / RCPT TO, judged by ``producer.addresses`` as every
    producer judges it (domain in A-labels, a UTF-8 local part kept); raises Poison naming ``field``."""
    try:
        return check_address(address)
    except AddressError as exc:
        raise Poison(f"invalid {field} address {address!r}: {exc.reason}") from None


def check_recipient(recipient: Recipient) -> Recipient:
    check_header_value("recipient name", recipient.name)
    return Recipient(normalize_address(recipient.address), recipient.name, recipient.context)


def check_envelope(envelope: Envelope, now: float | None = None) -> Envelope:
    if envelope.not_after is not None and (now or time.time()) > envelope.not_after:
        raise Skipped(f"expired: not_after {envelope.not_after} has passed")
    for name, value in envelope.headers.items():
        if name.lower() not in ALLOWED_HEADERS and not name.lower().startswith("x-"):
            raise Poison(f"header {name!r} may not be set by a job (allowed: {', '.join(sorted(ALLOWED_HEADERS))}, X-*)")
        if not name.isascii() or not name.replace("-", "").isalnum():
            raise Poison(f"header name {name!r} is not a valid field name")
        check_header_value(f"header {name}", value)
    if envelope.kind == "mail":
        return replace(envelope, to=(check_recipient(envelope.recipient),))
    if envelope.kind == "raw":
        sender = normalize_address(envelope.sender, "sender") if envelope.sender else ""
        return replace(envelope, to=tuple(check_recipient(r) for r in envelope.to), sender=sender)
    return envelope
