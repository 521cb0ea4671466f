"""Reply addresses: ``notify(..., reply=True)`` mail gets ``Reply-To: reply+TOKEN@<BEANMAIL_REPLY_DOMAIN>``.

The token names the delivery (an id derived from key and recipient; the store maps it back to
the key, recipient, template and entity references, written before the message goes), carries
its expiry (the day it stops being accepted, BEANMAIL_REPLY_TTL after the send) and a MAC over
both with the first key of BEANMAIL_REPLY_SECRET (every listed key verifies: rotation as for
VERP tokens). Lowercase base32, 32 characters, since some MTAs fold the case of local parts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import time
from typing import TYPE_CHECKING, Mapping

from producer.envelope import keys

from ..logs import get_logger
from ..settings import Settings
from .config import reply_secret

if TYPE_CHECKING:
    from producer.envelope import Envelope

    from ..store import Store

REPLY_HEADER = "X-Beanmail-Reply"  # what notify(reply=True) sets; the worker replaces it by Reply-To
LOCAL_PART = "reply"
_TOKEN = re.compile(r"^[a-z2-7]{32}$")
DAY = 86400


class ReplyTokenError(ValueError):
    """A reply address that is forged, damaged or expired; the message says which."""


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, b"beanmail-reply:" + body, hashlib.sha256).digest()[:8]


def token_id(key: str, recipient: str) -> str:
    return _b32(hashlib.sha256(f"{key}\0{recipient.lower()}".encode()).digest()[:10])


def make_token(key: str, recipient: str, secret: str, ttl: float, now: float | None = None) -> str:
    expires_day = int(((time.time() if now is None else now) + ttl) // DAY) + 1  # accepted through that day's start
    body = hashlib.sha256(f"{key}\0{recipient.lower()}".encode()).digest()[:10] + struct.pack(">H", expires_day)
    return _b32(body + _mac(keys(secret)[0], body))


def verify_token(token: str, secret: str, now: float | None = None) -> str:
    """The token's id if one of the secret's keys made it and it has not expired."""
    token = token.lower()
    if not _TOKEN.match(token):
        raise ReplyTokenError("malformed reply token")
    try:
        raw = base64.b32decode(token.upper())
    except (binascii.Error, ValueError):
        raise ReplyTokenError("malformed reply token") from None
    body, mac = raw[:12], raw[12:]
    if not any(hmac.compare_digest(mac, _mac(k, body)) for k in keys(secret)):
        raise ReplyTokenError("forged reply token (no key of BEANMAIL_REPLY_SECRET made it)")
    (expires_day,) = struct.unpack(">H", body[10:12])
    if (time.time() if now is None else now) >= expires_day * DAY:
        raise ReplyTokenError(f"expired reply token (valid until {time.strftime('%Y-%m-%d', time.gmtime(expires_day * DAY))})")
    return _b32(body[:10])


def address(token: str, domain: str) -> str:
    return f"{LOCAL_PART}+{token}@{domain}"


def token_in(addr: str, domain: str) -> str | None:
    """The token of a reply address of ``domain``, unverified; None for any other address."""
    addr = addr.strip().strip("<>").strip().lower()
    local, _, dom = addr.rpartition("@")
    if dom != domain.lower() or not local.startswith(LOCAL_PART + "+"):
        return None
    return local[len(LOCAL_PART) + 1:]


def reply_headers(settings: Settings, store: "Store", envelope: "Envelope", headers: Mapping[str, str]) -> dict[str, str]:
    """The message's headers with ``X-Beanmail-Reply`` replaced by a signed Reply-To (the pipeline's
    one-line hook); unchanged when the job did not ask for replies."""
    marker = next((name for name in headers if name.lower() == REPLY_HEADER.lower()), None)
    if marker is None:
        return dict(headers)
    out = {k: v for k, v in headers.items() if k != marker}
    if not settings.reply_domain:
        get_logger().warning("reply=True but BEANMAIL_REPLY_DOMAIN is not set: sent without a reply address",
                             template=envelope.template)
        return out
    recipient = envelope.recipient.address
    token = make_token(envelope.id, recipient, reply_secret(settings), settings.reply_ttl)
    store.remember_reply(token_id(envelope.id, recipient), envelope.id, recipient, envelope.template,
                         json.dumps(envelope.entities, sort_keys=True))
    out = {k: v for k, v in out.items() if k.lower() != "reply-to"}  # ours: the reply must come back to us
    out["Reply-To"] = address(token, settings.reply_domain)
    return out
