"""Checks that run before any rendering: addresses, header values, expiry.

Recipients and senders are checked for syntax only: special-use domains (``localhost``,
``.test``, ``.example``, ``.invalid``) are real in development and tests, and whether a domain
takes mail is for DNS and the receiving server to say. Every error names the field it is about.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError
from email_validator.syntax import validate_email_domain_name, validate_email_local_part  # 2.x

from producer.envelope import Envelope, Recipient

from .outcomes import Poison, Skipped

# Headers a job may set; everything structural (From, To, Cc, Content-*, MIME-Version, ...) is ours.
ALLOWED_HEADERS = {"reply-to", "in-reply-to", "references", "list-id", "list-unsubscribe",
                   "list-unsubscribe-post", "precedence", "auto-submitted", "keywords"}
# every control character but tab: CR and LF split headers; the others (\x0b, \x0c, \x1c-\x1e
# are line breaks to str.splitlines) corrupt them in readers that honour them
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES) | {"example", "localdomain"}


def check_header_value(where: str, value: str) -> None:
    if _CONTROL.search(value):
        raise Poison(f"header injection: {where} contains a control character (CR, LF, NUL or another)")


@lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """The ASCII form of a domain, checked once per domain (a mailout sends to a few domains
    many times). Raises EmailNotValidError."""
    try:
        return validate_email_domain_name(domain, test_environment=True, globally_deliverable=False)["ascii_domain"]
    except EmailNotValidError:
        last = domain.rstrip(".").rpartition(".")[2].lower()
        if "." in domain and last not in _SPECIAL_USE:
            raise
    # dotless (localhost) or special-use: email-validator refuses these outright; check the syntax
    ascii_domain = validate_email_domain_name(f"{domain}.example", test_environment=True,
                                              globally_deliverable=False)["ascii_domain"]
    return ascii_domain[: -len(".example")]


def normalize_address(address: str, field: str = "recipient") -> str:
    """The address as it goes into MAIL FROM / RCPT TO; raises Poison naming ``field``."""
    check_header_value(f"{field} address", address)
    local, at, domain = address.rpartition("@")
    try:
        if not at or not local:
            raise EmailNotValidError("an email address must have one @-sign with something before it")
        ascii_domain = _domain(domain)
        validate_email_local_part(local, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise Poison(f"invalid {field} address {address!r}: {exc}") from None
    return f"{local}@{ascii_domain}"


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
