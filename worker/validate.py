"""Checks that run before any rendering: addresses, header values, expiry."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email
from email_validator.syntax import validate_email_local_part  # 2.x; the domain part is cached

from producer.envelope import Envelope, Recipient

from .outcomes import Poison, Skipped

# Headers a job may set; everything structural (From, To, Content-*, MIME-Version, ...) is ours.
ALLOWED_HEADERS = {"reply-to", "in-reply-to", "references", "list-id", "list-unsubscribe",
                   "list-unsubscribe-post", "precedence", "auto-submitted", "keywords"}
_BAD_CHARS = ("\r", "\n", "\0")


def check_header_value(where: str, value: str) -> None:
    if any(c in value for c in _BAD_CHARS):
        raise Poison(f"header injection: {where} contains CR, LF or NUL")


@lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """The ASCII form of a domain, checked once per domain: most of email-validator's work is
    the domain's, and a mailout sends to a few domains many times."""
    try:
        return validate_email(f"postmaster@{domain}", check_deliverability=False, allow_smtputf8=False).ascii_domain
    except EmailNotValidError as exc:
        raise Poison(f"invalid recipient address: {exc}") from None


def normalize_address(address: str) -> str:
    """The address as it goes into RCPT TO; raises Poison with email-validator's explanation."""
    check_header_value("address", address)
    local, at, domain = address.rpartition("@")
    if not at:
        raise Poison("invalid recipient address: an email address must have an @-sign")
    ascii_domain = _domain(domain)
    try:
        validate_email_local_part(local, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise Poison(f"invalid recipient address: {exc}") from None
    return f"{local}@{ascii_domain}"


def check_recipient(recipient: Recipient) -> Recipient:
    check_header_value("recipient name", recipient.name)
    return Recipient(normalize_address(recipient.address), recipient.name, recipient.context)


def check_envelope(envelope: Envelope, now: float | None = None) -> Envelope:
    if envelope.not_after is not None and (now or time.time()) > envelope.not_after:
        raise Skipped(f"expired: not_after {envelope.not_after} has passed")
    for name, value in envelope.headers.items():
        if name.lower() not in ALLOWED_HEADERS and not name.lower().startswith("x-"):
            raise Poison(f"header {name!r} may not be set by a job")
        if not name.isascii() or not name.replace("-", "").isalnum():
            raise Poison(f"header name {name!r} is not a valid field name")
        check_header_value(f"header {name}", value)
    if envelope.kind == "mail":
        return replace(envelope, to=(check_recipient(envelope.recipient),))
    if envelope.kind == "raw":
        sender = normalize_address(envelope.sender) if envelope.sender else ""
        return replace(envelope, to=tuple(check_recipient(r) for r in envelope.to), sender=sender)
    return envelope
