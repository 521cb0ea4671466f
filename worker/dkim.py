"""DKIM signing (RFC 6376) with dkimpy: the worker signs every message it builds, and raw
messages whose From is in the signing domain, whatever the transport.

dkimpy does the canonicalisation and the signature; this module only loads the key (any PEM:
PKCS#1 or PKCS#8, RSA or Ed25519, as ``openssl genpkey`` or ``beanmail dkim keygen`` writes
it), chooses the headers to sign, and writes new keys with their DNS TXT record.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

# what a receiver shows or acts on; each signed only when present (h= lists what is signed)
SIGNED = ("from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
          "content-type", "content-transfer-encoding", "feedback-id", "list-id",
          "list-unsubscribe", "list-unsubscribe-post", "precedence", "auto-submitted", "in-reply-to",
          "references")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)


class DkimKeyError(ValueError):
    """The key file is missing, unreadable or not a private RSA/Ed25519 key."""


@dataclass(frozen=True)
class Signer:
    domain: str
    selector: str
    algorithm: bytes  # b"rsa-sha256" | b"ed25519-sha256"
    key: bytes  # what dkimpy takes: PKCS#1 PEM (RSA) or base64 of the 32-byte seed (Ed25519)

    @classmethod
    def from_file(cls, path: str, selector: str, domain: str) -> "Signer":
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DkimKeyError(f"cannot read the DKIM key {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DkimKeyError(f"{path} is not a PEM private key without a passphrase: {exc}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:
                raise DkimKeyError(f"{path}: an RSA key of {key.key_size} bits is refused by receivers (1024 at least)")
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
            return cls(domain.lower(), selector, b"rsa-sha256", pem)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            return cls(domain.lower(), selector, b"ed25519-sha256", base64.b64encode(seed))
        raise DkimKeyError(f"{path}: a {type(key).__name__} is no DKIM key (RSA or Ed25519)")

    def covers(self, message: bytes) -> bool:
        """True when the message's From is in the signing domain (or a subdomain of it): only
        then does a signature align with From (DMARC) and mean anything to a receiver."""
        head = _HEADER_END.split(message, 1)[0]
        for name, value in _FIELD.findall(head):
            if name.lower() == b"from":
                addresses = getaddresses([value.decode("utf-8", "replace")])
                domain = addresses[0][1].rpartition("@")[2].lower() if addresses else ""
                return domain == self.domain or domain.endswith("." + self.domain)
        return False

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front of it."""
        head = _HEADER_END.split(message, 1)[0]
        present = {name.lower().decode("ascii") for name, _ in _FIELD.findall(head)}
        # From once more than it occurs: a From added on the way cannot pass as ours
        headers = [h for h in SIGNED if h in present] + ["from"]
        signature = dkim.sign(message, self.selector.encode(), self.domain.encode(), self.key,
                              signature_algorithm=self.algorithm, canonicalize=(b"relaxed", b"relaxed"),
                              include_headers=[h.encode() for h in headers], linesep=b"\r\n")
        return signature + message


def dns_record(public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The TXT record's value: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 3.6.1, RFC 8463)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """A TXT value cut into the 255-octet character-strings DNS holds (a 2048-bit key needs two)."""
    return [value[i:i + size] for i in range(0, len(value), size)]


def keygen(path: str, *, algorithm: str = "rsa", bits: int = 2048) -> str:
    """Write a new private key (PKCS#8 PEM, mode 0600; an existing file is never overwritten)
    and return its TXT record value."""
    if algorithm == "ed25519":
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        raise ValueError(f"algorithm must be rsa or ed25519, not {algorithm!r}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return dns_record(key.public_key())


def zone_line(selector: str, domain: str, record: str) -> str:
    """The record as a zone-file line, long values split into quoted strings."""
    quoted = " ".join(f'"{s}"' for s in txt_strings(record))
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"
