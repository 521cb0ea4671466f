"""VERP return paths (``bounces+TOKEN@example.org``) whose token names one delivery and is
signed, so a bounce can be tied to the exact message and recipient and a forged one refused.

The token is short enough for any local part (RFC 5321 allows 64 octets): an id derived from
the delivery (key and recipient; the store maps it back) and a MAC over it, both lowercase
base32, since some MTAs fold the case of local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from producer.envelope import Secret, keys

ID_CHARS, MAC_CHARS = 16, 13  # 10 and 8 bytes
_TOKEN = re.compile(rf"^[a-z2-7]{{{ID_CHARS + MAC_CHARS}}}$")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _mac(key: bytes, token_id: str) -> str:
    return _b32(hmac.new(key, b"beanmail-verp:" + token_id.encode(), hashlib.sha256).digest()[:8])


def token_id(key: str, recipient: str) -> str:
    return _b32(hashlib.sha256(f"{key}\0{recipient.lower()}".encode()).digest()[:10])


def make_token(key: str, recipient: str, secret: Secret) -> str:
    tid = token_id(key, recipient)
    return tid + _mac(keys(secret)[0], tid)


def return_path(base: str, token: str) -> str:
    """``bounces@example.org`` + token -> ``bounces+token@example.org``."""
    local, _, domain = base.rpartition("@")
    return f"{local}+{token}@{domain}"


def token_in(address: str, base: str) -> str | None:
    """The token of a return path made from ``base``, unverified; None for any other address."""
    address = address.strip().strip("<>").strip().lower()
    local, _, domain = address.rpartition("@")
    base_local, _, base_domain = base.lower().rpartition("@")
    if domain != base_domain or not local.startswith(base_local + "+"):
        return None
    return local[len(base_local) + 1:]


def verify(token: str, secret: Secret) -> str | None:
    """The token's id if one of the secret's keys signed it; None if forged or damaged."""
    token = token.lower()
    if not _TOKEN.match(token):
        return None
    tid, mac = token[:ID_CHARS], token[ID_CHARS:]
    if any(hmac.compare_digest(mac, _mac(k, tid)) for k in keys(secret)):
        return tid
    return None
