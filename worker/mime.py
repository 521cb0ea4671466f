"""Rendered parts to RFC 5322 bytes: RFC 2047 headers and UTF-8 bodies, independent of the
process locale (supervisord starts programs with a bare environment)."""

from __future__ import annotations

import email.policy
import time
from email.headerregistry import Address
from email.message import EmailMessage
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Mapping

from producer.envelope import Recipient

from .render import Rendered

POLICY = email.policy.SMTP.clone(max_line_length=78)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def format_address(recipient: Recipient) -> Address:
    local, _, domain = recipient.address.rpartition("@")
    return Address(display_name=recipient.name, username=local, domain=domain)


def sender_address(from_addr: str) -> Address:
    name, address = parseaddr(from_addr)
    return format_address(Recipient(address, name))


def build(rendered: Rendered, sender: Address, recipient: Recipient,
          headers: Mapping[str, str] = {}, *, message_id: str | None = None,
          now: float | None = None) -> bytes:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = format_address(recipient)
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain=sender.domain or "localhost")
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(rendered.text, charset="utf-8", cte=_cte(rendered.text))
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte=_cte(rendered.html))
    return msg.as_bytes(policy=POLICY)


def _cte(text: str) -> str:
    """quoted-printable keeps mostly-ASCII text readable; base64 is smaller for other scripts."""
    if text.isascii():
        return "7bit" if all(len(line) <= 998 for line in text.splitlines()) else "quoted-printable"
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return "quoted-printable" if non_ascii * 4 < len(text) else "base64"
