"""DKIM signing (RFC 6376; Ed25519: RFC 8463): the worker signs every message it builds, and raw
messages whose From is in the signing domain, whatever the transport; ``dkim keygen`` writes new
keys with their DNS TXT record.

One key signs, or several: each key in ``BEANMAIL_DKIM_KEY`` adds its own DKIM-Signature under
the selector in the same place of ``BEANMAIL_DKIM_SELECTOR`` (RSA beside Ed25519, RFC 8463
section 3; or an old and a new selector while a rotation's DNS record spreads). Keys are read
once, at start, into OpenSSL key objects (``cryptography``); per message the work is one
canonicalisation and body hash (worker/dkim_canon.py, shared by every signature), then per key
one header hash and one OpenSSL signature. dkimpy and opendkim verify what this writes in the
tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from . import dkim_canon
from .dkim_canon import MessageFormatError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["DkimKeyError", "DkimSettingsError", "MessageFormatError", "Signer", "SigningKey", "dns_record",
           "keygen", "txt_strings", "zone_line"]

# what a receiver shows or acts on; each signed only when present (h= lists what is signed)
SIGNED = ("from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
          "content-type", "content-transfer-encoding", "feedback-id", "list-id",
          "list-unsubscribe", "list-unsubscribe-post", "precedence", "auto-submitted", "in-reply-to",
          "references")
_SIGNED_BYTES = tuple(name.encode("ascii") for name in SIGNED)
MAX_KEYS = 4  # RSA and Ed25519, each with an old and a new selector during a rotation
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOTTED = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")  # RFC 6376 3.1: selector = sub-domain *("." sub-domain)
_PKCS1 = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())
_WIDTH = 76  # DKIM-Signature lines are folded to this many characters
_T_WORD = "t=0000000000;"  # the t= tag while folding: ten digits until the year 2286


class DkimKeyError(ValueError):
    """The key file is missing, unreadable or not a private RSA/Ed25519 key."""


class DkimSettingsError(ValueError):
    """The DKIM settings do not fit together; ``variable`` names the one to fix."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True)
class SigningKey:
    """One private key, parsed once, and the selector its public key is published under."""

    selector: str
    path: str
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.private, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    @property
    def description(self) -> str:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return f"{self.selector}: rsa-sha256, {self.private.key_size} bits, {self.path}"
        return f"{self.selector}: ed25519-sha256, {self.path}"

    def sign_digest(self, digest: bytes) -> bytes:
        """The signature over the SHA-256 of the canonical header: RSASSA-PKCS1-v1_5 for RSA,
        PureEdDSA over the 32-byte hash for Ed25519 (RFC 8463 section 4)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)
        return self.private.sign(digest, _PKCS1, _PREHASHED)

    @classmethod
    def from_file(cls, path: str, selector: str) -> "SigningKey":
        """Any PEM private key without a passphrase: PKCS#1 or PKCS#8, RSA (1024 bits at least)
        or Ed25519, as ``openssl genpkey`` or ``beanmail dkim keygen`` writes it."""
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
            return cls(selector, path, key)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(selector, path, key)
        raise DkimKeyError(f"{path}: a {type(key).__name__} is no DKIM key (RSA or Ed25519)")


def split_list(value: str) -> list[str]:
    """A comma-separated setting as its items (blanks dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_canonicalization(value: str) -> tuple[str, str]:
    """``relaxed/relaxed`` -> ("relaxed", "relaxed"); one word means it for header and body."""
    parts = [p.strip().lower() for p in value.split("/")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p not in dkim_canon.CANONICALIZATIONS for p in parts):
        raise DkimSettingsError("BEANMAIL_DKIM_CANONICALIZATION", f"{value!r} must be header/body, each relaxed or"
                                " simple (relaxed/relaxed, simple/simple, relaxed/simple or simple/relaxed)")
    return parts[0], parts[1]


def signing_domain(domain: str) -> str:
    """The ``d=`` domain in lower case, an internationalised one as its A-labels."""
    domain = domain.strip().rstrip(".").lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        ascii_domain = ""
    if not ascii_domain or _DOTTED.fullmatch(ascii_domain) is None or "." not in ascii_domain:
        raise DkimSettingsError("BEANMAIL_DKIM_DOMAIN", f"{domain!r} is not a domain name to sign for"
                                " (the default is the domain of BEANMAIL_FROM)")
    return ascii_domain


class Signer:
    """Signs messages with every configured key, all under one ``d=`` and one canonicalisation."""

    def __init__(self, domain: str, keys: Sequence[SigningKey], canonicalization: str = "relaxed/relaxed") -> None:
        if not keys:
            raise DkimSettingsError("BEANMAIL_DKIM_KEY", "no key")
        self.domain = signing_domain(domain)
        self.keys = tuple(keys)
        self.header_form, self.body_form = parse_canonicalization(canonicalization)
        c = f"{self.header_form}/{self.body_form}"
        # each key's DKIM-Signature up to its t= value, folded once; h= folded once per field list
        self._starts = [_fold("DKIM-Signature:", ["v=1;", f"a={key.algorithm};", f"c={c};", f"d={self.domain};",
                                                  f"s={key.selector};", _T_WORD]).split(_T_WORD)[0].encode("ascii")
                        + b"t=" for key in self.keys]
        self._h_lines: dict[tuple[bytes, ...], bytes] = {}

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Signer | None":
        """The signer the settings describe, None without a key; a key that cannot be read, or
        lists that do not pair up, raise DkimSettingsError naming the variable."""
        parse_canonicalization(settings.dkim_canonicalization)
        paths, selectors = split_list(settings.dkim_key), split_list(settings.dkim_selector)
        if not paths:
            if selectors or settings.dkim_domain:
                raise DkimSettingsError("BEANMAIL_DKIM_KEY", "needed with BEANMAIL_DKIM_SELECTOR/BEANMAIL_DKIM_DOMAIN")
            return None
        if not selectors:
            raise DkimSettingsError("BEANMAIL_DKIM_SELECTOR", "needed with BEANMAIL_DKIM_KEY")
        if len(paths) != len(selectors):
            raise DkimSettingsError("BEANMAIL_DKIM_SELECTOR", f"{len(selectors)} selector(s) for {len(paths)} key(s):"
                                    " the n-th selector is the n-th key's (BEANMAIL_DKIM_KEY=a.pem,b.pem"
                                    " BEANMAIL_DKIM_SELECTOR=a,b)")
        if len(paths) > MAX_KEYS:
            raise DkimSettingsError("BEANMAIL_DKIM_KEY", f"{len(paths)} keys; at most {MAX_KEYS} signatures a message"
                                    " (each costs a signature per message, receivers check a few)")
        for selector in selectors:
            if _DOTTED.fullmatch(selector) is None:
                raise DkimSettingsError("BEANMAIL_DKIM_SELECTOR", f"{selector!r} is no selector (letters, digits,"
                                        " hyphens, dot-separated: it becomes SELECTOR._domainkey.DOMAIN)")
        twice = sorted({s for s in selectors if selectors.count(s) > 1})
        if twice:
            raise DkimSettingsError("BEANMAIL_DKIM_SELECTOR", f"{', '.join(twice)} listed twice: one selector"
                                    " publishes one key")
        keys = []
        for path, selector in zip(paths, selectors):
            try:
                keys.append(SigningKey.from_file(path, selector))
            except DkimKeyError as exc:
                raise DkimSettingsError("BEANMAIL_DKIM_KEY", str(exc)) from None
        return cls(settings.dkim_signing_domain, keys, settings.dkim_canonicalization)

    def covers(self, message: bytes) -> bool:
        """True when the message's From is in the signing domain (or a subdomain of it): only
        then does a signature align with From (DMARC) and mean anything to a receiver."""
        head = _HEADER_END.split(message, 1)[0]
        for name, value in _FIELD.findall(head):
            if name.lower() == b"from":
                addresses = getaddresses([value.decode("utf-8", "replace")])
                domain = addresses[0][1].rpartition("@")[2].strip().rstrip(".").lower() if addresses else ""
                try:
                    domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
                except UnicodeError:
                    return False
                return domain == self.domain or domain.endswith("." + self.domain)
        return False

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """The message, with CRLF line ends, under one DKIM-Signature per key (the first key's
        on top). A header that is no list of fields raises MessageFormatError."""
        parsed = dkim_canon.parse(message)
        present = [f.name for f in parsed.fields]
        if b"from" not in present:
            raise MessageFormatError("the message has no From field, which a signature must cover")
        # each field as often as it occurs, From once more: a From added on the way fails
        if len(set(present)) == len(present):  # the usual case: no field twice
            names = [n for n in _SIGNED_BYTES if n in present] + [b"from"]
        else:
            names = [n for n in _SIGNED_BYTES for _ in range(present.count(n))] + [b"from"]
        form = self.header_form
        signed = dkim_canon.headers([f.raw for f in dkim_canon.select(parsed.fields, names)], form)
        body_hash = base64.b64encode(hashlib.sha256(dkim_canon.body(parsed.body, self.body_form)).digest())
        t = b"%d;" % int(time.time() if now is None else now)
        h_lines = self._h_lines.get(tuple(names))
        if h_lines is None:
            if len(self._h_lines) > 1024:  # only a few field lists ever occur; never grow without bound
                self._h_lines.clear()
            h_lines = self._h_lines[tuple(names)] = ("\r\n" + _fold("", _split_h(b":".join(names).decode()))).encode()
        tail = t + h_lines + b"\r\n bh=" + body_hash + b";\r\n b="  # b= on its own line, empty while hashing
        out = []
        for key, start in zip(self.keys, self._starts):
            head = start + tail
            own = dkim_canon.header(head, form)[:-2]  # hashed without its CRLF (3.7)
            value = base64.b64encode(key.sign_digest(hashlib.sha256(signed + own).digest()))
            out.append(head + _fold_b(value) + b"\r\n")
        return b"".join(out) + parsed.message


def _split_h(h: str) -> list[str]:
    """``h=from:to:...;`` as words that may stand on lines of their own (FWS may follow a colon)."""
    names = h.split(":")
    return [f"h={names[0]}:"] + [f"{n}:" for n in names[1:-1]] + [f"{names[-1]};"] if len(names) > 1 \
        else [f"h={h};"]


def _fold(start: str, words: Sequence[str]) -> str:
    """Words joined by spaces (a colon-ended word of h= by nothing), lines folded before _WIDTH."""
    lines, line = [], start
    for word in words:
        glue = "" if line.endswith(":") and line != start else " "
        if len(line) + len(glue) + len(word) > _WIDTH:
            lines.append(line)
            line, glue = "", " "
        line += glue + word
    lines.append(line)
    return "\r\n".join(lines)


def _fold_b(value: bytes) -> bytes:
    """The signature's base64 after `` b=``, folded (verifiers ignore whitespace in b=, 3.5)."""
    first, rest = _WIDTH - len(" b="), _WIDTH - 1
    return b"\r\n ".join([value[:first]] + [value[i:i + rest] for i in range(first, len(value), rest)])


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
        if bits < 1024:
            raise ValueError(f"an RSA key of {bits} bits is refused by receivers (1024 at least, 2048 advised)")
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
