"""Receiving beanmail's delivery events in any Python web application: ``verify`` checks a
request's Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``: HMAC-SHA256 over ``id.timestamp.body``) and returns the event.

    event = verify(request_body, request_headers, "whsec_...")
    if event.type == "message.bounced": ...

Delivery is at least once: keep ``event.id`` and ignore an id seen before. Only the standard
library is used here (the worker signs with the ``standardwebhooks`` package; the tests check
that each accepts the other's)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger("beanmail.producer")

TOLERANCE = 300  # seconds a signature's timestamp may be away from now (replayed requests)
TYPES = ("message.sent", "message.bounced", "message.complained", "message.unsubscribed", "message.failed",
         "message.replied")


class EventVerificationError(ValueError):
    """The request is not a genuine, fresh event; the message says why (answer it 400/401)."""


@dataclass(frozen=True)
class Event:
    id: str  # stable: a retried delivery has the same one
    type: str
    timestamp: str  # when it happened, ISO 8601 UTC
    data: dict[str, Any] = field(default_factory=dict)  # key, recipient, template, entities, ... (docs/events.md)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header from a plain mapping, a case-insensitive one, or a WSGI environ (HTTP_WEBHOOK_ID)."""
    wsgi = "HTTP_" + name.upper().replace("-", "_")
    for k, v in headers.items():
        if k.lower() == name or k == wsgi:
            return str(v)
    return ""


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    names = secret.split(",") if isinstance(secret, str) else list(secret)
    out = []
    for s in (n.strip() for n in names):
        if not s:
            continue
        try:
            out.append(base64.b64decode(s.removeprefix("whsec_"), validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("an events secret is whsec_ followed by base64") from None
    if not out:
        raise ValueError("no events secret given")
    return out


def verify(body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str], *,
           tolerance: float = TOLERANCE, now: float | None = None) -> Event:
    """The event a request carries, if one of ``secret``'s keys (``whsec_…``; a comma-separated
    list or a sequence during a rotation) signed it within ``tolerance`` seconds of now;
    EventVerificationError otherwise. ``body`` is the raw request body, exactly as received."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    msg_id, stamp, signatures = (_header(headers, n) for n in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise EventVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent = int(stamp)
    except ValueError:
        raise EventVerificationError(f"webhook-timestamp {stamp[:40]!r} is not a number") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise EventVerificationError("webhook-timestamp too far from now (a replay, or a clock off)")
    signed = f"{msg_id}.{sent}.".encode() + raw
    expected = [base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()) for k in _keys(secret)]
    given = [s.partition(",")[2].encode() for s in signatures.split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise EventVerificationError("no signature matches (wrong secret, or a changed body)")
    try:
        payload = json.loads(raw)
        return Event(msg_id, str(payload["type"]), str(payload["timestamp"]), dict(payload.get("data") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise EventVerificationError(f"signed, but not an event: {exc}") from None


# -- the events tube's job format (the worker's worker/events/model.py writes the same) ------------

def event_id(type_: str, key: str, recipient: str, discriminator: str = "") -> str:
    """``evt_`` + 26 base32 characters of a hash over what the event is about (never when it was
    emitted: an emission repeated gives the same id)."""
    digest = hashlib.sha256("\0".join((type_, key, recipient.lower(), discriminator)).encode()).digest()
    return "evt_" + base64.b32encode(digest[:16]).decode("ascii").rstrip("=").lower()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_body(id_: str, at: float, payload: Mapping[str, Any]) -> bytes:
    """An event's job on the events tube: its id, when it happened, the webhook body."""
    return json.dumps({"id": id_, "at": at, "payload": payload}, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True).encode()


def emitting(record: Callable[[str, str], None], beanstalk_url: str, *, spool: str = "",
             tube: str = "events") -> Callable[[str, str], None]:
    """An unsubscribe ``record`` callback (``producer.unsubscribe.UnsubscribeApp``) that also
    queues a ``message.unsubscribed`` event once ``record`` returned. beanstalkd unreachable: the
    event goes to ``spool`` (``beanmail spool flush`` moves it on), or is logged at error."""
    from . import spool as spool_mod
    from .beanstalk import connect

    def record_and_emit(address: str, list_id: str) -> None:
        record(address, list_id)
        at = time.time()
        address = address.lower()
        payload = {"type": "message.unsubscribed", "timestamp": iso(at),
                   "data": {"key": "", "recipient": address, "template": "", "entities": {}, "list_id": list_id}}
        body = job_body(event_id("message.unsubscribed", "", address, list_id), at, payload)
        try:
            with connect(beanstalk_url.split(",")[0].strip(), timeout=5, encoding=None, use=tube) as client:
                client.put(body, priority=1024, ttr=300)
        except Exception as exc:  # noqa: BLE001 - the unsubscribe is recorded; its event must not vanish
            if spool:
                spool_mod.append(spool, tube, 1024, 0, 300, body)
                log.error("events tube unreachable (%s); unsubscribe event spooled to %s", exc, spool)
            else:
                log.error("events tube unreachable (%s); unsubscribe event not queued: %s", exc, body.decode())
    return record_and_emit
