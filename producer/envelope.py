"""Envelope v2: the one wire format shared by producers (any language) and workers.

A job body is UTF-8 JSON. The reference is ``docs/envelope.md`` with the JSON Schema in
``producer/envelope.schema.json``; this module is the only Python codec, so producer and worker
cannot drift apart.

A signed v2 job carries the exact bytes it signs, at a fixed place::

    {"v":2,"signed":<TEXT>,"sig":"<HMAC-SHA256 of TEXT, lowercase hex>"}

TEXT is an unsigned v2 envelope as the producer's own JSON encoder wrote it. Nothing is
re-serialized to be checked, so no language has to reproduce anyone's canonical form (v1 made
every producer re-derive Python's, and PHP could not: U+2028, ``ksort``, ``1.0e+25``). TEXT sits
in the body as JSON, not as a string: nothing is escaped twice, a signed job is 90 bytes longer
than the unsigned one, and the worker finds TEXT by position without parsing the body twice.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Sequence, Union

VERSION = 2
KINDS = ("mail", "mailout", "raw", "ref")
# ``digest``: collect into the recipient's digest of that period instead of sending now;
# "compiled" marks a digest message itself (made by ``beanmail digest run``), never collected again
DIGEST_PERIODS = ("hourly", "daily", "weekly")
DIGESTS = (*DIGEST_PERIODS, "compiled")

# priority name -> (tube, beanstalkd priority; lower is more urgent)
PRIORITIES: dict[str, tuple[str, int]] = {
    "urgent": ("mail.urgent", 100),
    "normal": ("mail.normal", 1024),
    "bulk": ("mail.bulk", 4096),
}
MAILOUT_TUBE = "mailout"
MAIL_TUBES = tuple(tube for tube, _ in PRIORITIES.values())

# A signed v2 body is SIGNED_HEAD + TEXT + SIG_HEAD + 64 hex digits + SIG_TAIL, byte for byte.
SIGNED_HEAD = b'{"v":2,"signed":'
SIG_HEAD = b',"sig":"'
SIG_TAIL = b'"}'
_TAIL = len(SIG_HEAD) + 64 + len(SIG_TAIL)
_HEX64 = re.compile(rb"[0-9a-f]{64}")
_LAYOUT = ('a signed v2 body is exactly {"v":2,"signed":TEXT,"sig":"<64 lowercase hex>"}: '
           "those bytes, no spaces, nothing before or after (docs/envelope.md)")

# BEANMAIL_SECRET: "new,old" or ["new", "old"]; the first signs, every one verifies.
Secret = Union[str, Sequence[str], None]


class EnvelopeError(ValueError):
    """The body is not a valid envelope; the message says which part and why."""


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.name:
            out["name"] = self.name
        if self.context:
            out["context"] = self.context
        return out


@dataclass(frozen=True)
class Envelope:
    kind: str
    id: str
    to: tuple[Recipient, ...]
    template: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    priority: str = "normal"
    not_after: int | None = None
    created_at: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""  # raw kind: the RFC 5322 message, base64
    sender: str = ""  # raw kind: envelope sender; empty means the configured From
    exclude: tuple[str, ...] = ()  # mailout kind: addresses to leave out
    ref: str = ""  # ref kind: the blob holding the whole job's body (a large message)
    store: dict[str, str] = field(default_factory=dict)  # ref kind: {"id", "at"} of the store holding it
    digest: str = ""  # mail, mailout: "hourly" | "daily" | "weekly" collects it; "compiled": a digest
    # the version the body was written in (1 is deprecated); encode() always writes VERSION
    v: int = field(default=VERSION, compare=False)

    @property
    def recipient(self) -> Recipient:
        return self.to[0]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "kind": self.kind, "id": self.id}
        if self.kind == "ref":  # a pointer: everything else lies in the blob
            out["ref"] = self.ref
            if self.store:
                out["store"] = dict(self.store)
            out["priority"] = self.priority
            out["created_at"] = self.created_at
            return out
        if self.kind == "mail":
            out["to"] = self.to[0].to_json()
        else:
            out["to"] = [r.to_json() for r in self.to]
        for name in ("template", "context", "entities", "headers", "message", "sender"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.digest:
            out["digest"] = self.digest
        out["priority"] = self.priority
        if self.not_after is not None:
            out["not_after"] = self.not_after
        out["created_at"] = self.created_at
        return out


def new_id() -> str:
    return uuid.uuid4().hex


# -- secrets ----------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _split(secret: str) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in secret.split(",") if k.strip())


def keys(secret: Secret) -> tuple[bytes, ...]:
    """The HMAC keys a secret setting names, signing key first: ``"new,old"`` (commas separate,
    white space around each is dropped) or a sequence. Parsed once per setting, not per job."""
    if not secret:
        return ()
    ring = _split(secret) if isinstance(secret, str) else tuple(k.encode() for k in secret if k)
    if not ring:  # a misconfigured secret must never turn verification off
        raise ValueError("the secret names no key")
    return ring


def _hmac_hex(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256").hex().encode()


def sign(text: bytes, secret: Secret) -> bytes:
    """The signed v2 body around an envelope's JSON text, signed with the first key."""
    return b"".join((SIGNED_HEAD, text, SIG_HEAD, _hmac_hex(keys(secret)[0], text), SIG_TAIL))


# -- v1 (deprecated): a signature over a canonical form every language had to reproduce ----------

def canonical(obj: dict[str, Any]) -> bytes:
    """v1's signed bytes: keys sorted, no spaces, UTF-8, '/' unescaped. (Also the compact
    size of a JSON value, as the Notifier's chunking counts it.)"""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(obj: dict[str, Any], secret: Secret) -> str:
    """v1's ``sig``, with the first key; kept to verify v1 jobs and to test them."""
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    return _hmac_hex(keys(secret)[0], canonical(unsigned)).decode()


# -- encoding ---------------------------------------------------------------------------------------

_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not the text "\u0000" (its backslash escaped)


def _dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. Text no mail can carry is refused here, at the producer, with where
    it is, rather than buried by the worker later: a lone surrogate (bytes decoded wrongly, or
    ``surrogateescape``) and NUL (RFC 5322 forbids it; PostgreSQL cannot store it)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"text that is not Unicode: a lone surrogate {text[exc.start]!r} after "
                            f"{text[max(0, exc.start - 40):exc.start]!r}; decode the bytes it came from with "
                            "their real charset") from None
    nul = _NUL.search(data)
    if nul:
        before = data[max(0, nul.start() - 40):nul.start()].decode(errors="replace")
        raise EnvelopeError(f"a NUL character (\\x00) after {before!r}: mail cannot carry it; remove it")
    return data


def encode(envelope: Envelope, secret: Secret = None) -> bytes:
    """A v2 body: the plain object, or with a secret the signed form around it."""
    text = _dumps(envelope.to_json())
    return sign(text, secret) if secret else text


def encoder_for(base: Envelope, secret: Secret = None) -> Callable[[str, Recipient], bytes]:
    """``(id, recipient) -> body`` for many mail jobs alike but for those two fields, as fan-out
    makes: everything else is serialized once. The same bytes as ``encode()``."""
    fields = replace(base, kind="mail", id="", to=(Recipient("-"),), exclude=()).to_json()
    del fields["v"], fields["kind"], fields["id"], fields["to"]
    rest = _dumps(fields)[1:]  # b'"template":...}'
    head = b'{"v":%d,"kind":"mail","id":' % VERSION

    def body(job_id: str, recipient: Recipient) -> bytes:
        return b"".join((head, json.dumps(job_id, ensure_ascii=False).encode(), b',"to":',
                         _dumps(recipient.to_json()), b",", rest))
    if not secret:
        return body
    key = keys(secret)[0]

    def signed(job_id: str, recipient: Recipient) -> bytes:
        text = body(job_id, recipient)
        return b"".join((SIGNED_HEAD, text, SIG_HEAD, _hmac_hex(key, text), SIG_TAIL))
    return signed


# -- decoding ---------------------------------------------------------------------------------------

def decode(body: bytes | str, secret: Secret = None) -> Envelope:
    """Parse and check a job body (v2, or the deprecated v1). With a secret, only a body signed
    with one of its keys passes. Raises EnvelopeError with a reason a person can act on."""
    if isinstance(body, str):
        try:
            body = body.encode()
        except UnicodeEncodeError as exc:
            raise EnvelopeError(f"body is not UTF-8 ({exc.reason} at character {exc.start})") from None
    ring = keys(secret) if secret else ()
    if body.startswith(SIGNED_HEAD):
        obj = _load(_signed_text(body, ring), "the signed text")
        if obj.get("v") != 2:
            raise EnvelopeError(f"the signed text must be a v2 envelope: 'v' must be 2, got {obj.get('v')!r}")
        return _from_json(obj, 2)
    obj = _load(body, "body")
    v = obj.get("v")
    if v == 2:
        if "signed" in obj or "sig" in obj:
            raise EnvelopeError(_LAYOUT)
        if ring:
            raise EnvelopeError("unsigned job: a secret is configured and the body is not a signed v2 envelope")
        return _from_json(obj, 2)
    if v == 1:
        if ring:
            _verify_v1(obj, ring)
        return _from_json(obj, 1)
    unknown = obj.keys() - _ALL_FIELDS
    if unknown:
        raise EnvelopeError(f"unknown field(s): {', '.join(sorted(unknown))}")
    raise EnvelopeError(f"'v' must be 1 (deprecated) or 2, got {v!r}")


def _signed_text(body: bytes, ring: tuple[bytes, ...]) -> bytes:
    if len(body) < len(SIGNED_HEAD) + _TAIL or body[-_TAIL:-66] != SIG_HEAD or body[-2:] != SIG_TAIL:
        raise EnvelopeError(_LAYOUT)
    text, sig = body[len(SIGNED_HEAD):-_TAIL], body[-66:-2]
    if not _HEX64.fullmatch(sig):
        raise EnvelopeError(_LAYOUT)
    if not ring:
        return text
    for key in ring:
        if hmac.compare_digest(_hmac_hex(key, text), sig):
            return text
    raise EnvelopeError("bad signature: 'sig' is not the HMAC of the signed text with any configured secret")


def _verify_v1(obj: dict[str, Any], ring: tuple[bytes, ...]) -> None:
    sig = obj.get("sig")
    if not isinstance(sig, str):
        raise EnvelopeError("unsigned job: a secret is configured and 'sig' is missing")
    data = canonical({k: v for k, v in obj.items() if k != "sig"})
    given = sig.encode("utf-8", "surrogatepass")
    if not any(hmac.compare_digest(_hmac_hex(key, data), given) for key in ring):
        raise EnvelopeError("bad signature: 'sig' does not match any configured secret")


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnvelopeError(f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


_FIELDS = {
    "v", "kind", "id", "template", "to", "context", "entities", "priority", "not_after",
    "created_at", "headers", "message", "sender", "exclude", "digest",
}
_REF_FIELDS = {"v", "kind", "id", "ref", "store", "priority", "created_at"}
_ALLOWED = {2: _FIELDS, 1: _FIELDS | {"sig"}}
_REF_ALLOWED = {2: _REF_FIELDS, 1: _REF_FIELDS | {"sig"}}
_ALL_FIELDS = _FIELDS | _REF_FIELDS | {"sig", "signed"}


def _from_json(obj: dict[str, Any], v: int) -> Envelope:
    kind = obj.get("kind")
    unknown = obj.keys() - (_REF_ALLOWED[v] if kind == "ref" else _ALLOWED[v])
    if unknown:
        where = " in a ref job (it carries v, kind, id, ref, store, priority, created_at)" if kind == "ref" else ""
        raise EnvelopeError(f"unknown field(s){where}: {', '.join(sorted(unknown))}")
    if kind not in KINDS:
        raise EnvelopeError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    job_id = _str(obj, "id", required=True)
    if len(job_id) > 200:
        raise EnvelopeError("'id' is longer than 200 characters")
    priority = obj.get("priority", "normal")
    if priority not in PRIORITIES:
        raise EnvelopeError(f"'priority' must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if kind == "ref":
        store = obj.get("store", {})  # (written since 0.3: a ref without it names no store)
        if "store" in obj and (not isinstance(store, dict) or set(store) != {"id", "at"}
                               or not all(isinstance(v, str) for v in store.values())):
            raise EnvelopeError("'store' must be an object of two strings, id and at (the store holding the blob)")
        return Envelope(kind=kind, id=job_id, to=(), priority=priority, ref=_str(obj, "ref", required=True),
                        store=dict(store), created_at=_number(obj, "created_at") or 0.0, v=v)
    raw_to = obj.get("to")
    if kind == "mail":
        to = (_recipient(raw_to, "to"),)
    else:
        if not isinstance(raw_to, list) or (kind == "raw" and not raw_to):
            raise EnvelopeError(f"'to' must be a non-empty list for kind {kind!r}")
        to = tuple(_recipient(r, f"to[{i}]") for i, r in enumerate(raw_to))
    template = _str(obj, "template", required=kind != "raw")
    if template and (template.startswith(("/", ".")) or ".." in template.split("/")):
        raise EnvelopeError(f"'template' must be a plain name, got {template!r}")
    entities = _dict(obj, "entities")
    for name, ref in entities.items():
        if not isinstance(ref, dict) or not isinstance(ref.get("type"), str) or "id" not in ref:
            raise EnvelopeError(f"entities.{name} must be an object with 'type' and 'id'")
    headers = _dict(obj, "headers")
    for name, value in headers.items():
        if not isinstance(value, str):
            raise EnvelopeError(f"headers.{name} must be a string")
    exclude = obj.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(a, str) for a in exclude):
        raise EnvelopeError("'exclude' must be a list of addresses")
    message = _str(obj, "message", required=kind == "raw")
    digest = _str(obj, "digest")
    if digest and (digest not in DIGESTS or kind not in ("mail", "mailout")):
        raise EnvelopeError(f"'digest' must be one of {', '.join(DIGESTS)} on a mail or mailout job, got {digest!r}"
                            f" on kind {kind!r}")
    return Envelope(
        kind=kind,
        id=job_id,
        to=to,
        template=template,
        context=_dict(obj, "context"),
        entities=entities,
        priority=priority,
        not_after=_number(obj, "not_after"),
        created_at=_number(obj, "created_at") or 0.0,
        headers=headers,
        message=message,
        sender=_str(obj, "sender"),
        exclude=tuple(exclude),
        digest=digest,
        v=v,
    )


def _recipient(value: Any, where: str) -> Recipient:
    if isinstance(value, str):
        return Recipient(address=value)
    if not isinstance(value, dict) or not isinstance(value.get("address"), str):
        raise EnvelopeError(f"'{where}' must be an address or an object with 'address'")
    name = value.get("name", "")
    context = value.get("context", {})
    if not isinstance(name, str) or not isinstance(context, dict):
        raise EnvelopeError(f"'{where}': 'name' must be a string and 'context' an object")
    return Recipient(address=value["address"], name=name, context=context)


def _str(obj: dict[str, Any], key: str, required: bool = False) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise EnvelopeError(f"'{key}' must be a non-empty string" if required else f"'{key}' must be a string")
    return value


def _dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise EnvelopeError(f"'{key}' must be an object")
    return value


def _number(obj: dict[str, Any], key: str) -> Any:
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise EnvelopeError(f"'{key}' must be a number (Unix seconds)")
    return value


def now() -> float:
    return round(time.time(), 3)
