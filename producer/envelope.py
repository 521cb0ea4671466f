"""Envelope v1: the one wire format shared by producers (any language) and workers.

A job body is UTF-8 JSON. The reference is ``docs/envelope.md`` with the JSON Schema in
``producer/envelope.schema.json``; this module is the only Python codec, so producer and worker
cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

VERSION = 1
KINDS = ("mail", "mailout", "raw", "ref")

# priority name -> (tube, beanstalkd priority; lower is more urgent)
PRIORITIES: dict[str, tuple[str, int]] = {
    "urgent": ("mail.urgent", 100),
    "normal": ("mail.normal", 1024),
    "bulk": ("mail.bulk", 4096),
}
MAILOUT_TUBE = "mailout"
MAIL_TUBES = tuple(tube for tube, _ in PRIORITIES.values())


class EnvelopeError(ValueError):
    """The body is not a valid v1 envelope; the message says which part and why."""


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
    v: int = VERSION

    @property
    def recipient(self) -> Recipient:
        return self.to[0]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "kind": self.kind, "id": self.id}
        if self.kind == "mail":
            out["to"] = self.to[0].to_json()
        elif self.kind == "ref":
            out["ref"] = self.ref
        else:
            out["to"] = [r.to_json() for r in self.to]
        for name in ("template", "context", "entities", "headers", "message", "sender"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.exclude:
            out["exclude"] = list(self.exclude)
        out["priority"] = self.priority
        if self.not_after is not None:
            out["not_after"] = self.not_after
        out["created_at"] = self.created_at
        return out


def new_id() -> str:
    return uuid.uuid4().hex


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes a signature covers: keys sorted, no spaces, UTF-8, '/' unescaped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(obj: dict[str, Any], secret: str) -> str:
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    return hmac.new(secret.encode(), canonical(unsigned), hashlib.sha256).hexdigest()


def encode(envelope: Envelope, secret: str | None = None) -> bytes:
    obj = envelope.to_json()
    if secret:
        obj["sig"] = signature(obj, secret)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encoder_for(base: Envelope, secret: str | None = None) -> Callable[[str, Recipient], bytes]:
    """``(id, recipient) -> body`` for many mail jobs alike but for those two fields, as fan-out
    makes: everything else is serialized once. (A signed body is canonical JSON, made in full.)"""
    if secret:
        return lambda job_id, recipient: encode(replace(base, kind="mail", id=job_id, to=(recipient,), exclude=()),
                                                secret)
    fields = replace(base, kind="mail", id="", to=(Recipient("-"),), exclude=()).to_json()
    del fields["v"], fields["kind"], fields["id"], fields["to"]
    rest = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:].encode()  # '"template":...}'
    head = b'{"v":%d,"kind":"mail","id":' % VERSION

    def body(job_id: str, recipient: Recipient) -> bytes:
        return b"".join((head, json.dumps(job_id, ensure_ascii=False).encode(), b',"to":',
                         json.dumps(recipient.to_json(), separators=(",", ":"), ensure_ascii=False).encode(),
                         b",", rest))
    return body


def decode(body: bytes | str, secret: str | None = None) -> Envelope:
    """Parse and check a job body. Raises EnvelopeError with a reason a person can act on."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        raise EnvelopeError(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"body must be a JSON object, not {type(obj).__name__}")
    if secret:
        sig = obj.get("sig")
        if not isinstance(sig, str):
            raise EnvelopeError("unsigned job: a secret is configured and 'sig' is missing")
        if not hmac.compare_digest(sig, signature(obj, secret)):
            raise EnvelopeError("bad signature: 'sig' does not match the configured secret")
    return _from_json(obj)


_FIELDS = {
    "v", "kind", "id", "template", "to", "context", "entities", "priority", "not_after",
    "created_at", "headers", "message", "sender", "exclude", "sig", "ref",
}


def _from_json(obj: dict[str, Any]) -> Envelope:
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise EnvelopeError(f"unknown field(s): {', '.join(unknown)}")
    if obj.get("v") != VERSION:
        raise EnvelopeError(f"'v' must be {VERSION}, got {obj.get('v')!r}")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise EnvelopeError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    job_id = _str(obj, "id", required=True)
    if len(job_id) > 200:
        raise EnvelopeError("'id' is longer than 200 characters")
    priority = obj.get("priority", "normal")
    if priority not in PRIORITIES:
        raise EnvelopeError(f"'priority' must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    raw_to = obj.get("to")
    if kind == "ref":
        ref = _str(obj, "ref", required=True)
        return Envelope(kind=kind, id=job_id, to=(), priority=priority, ref=ref,
                        created_at=_number(obj, "created_at") or 0.0)
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
