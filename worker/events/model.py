"""What an event is: its type, its stable id, its payload, and its job on the events tube.

An event's id is derived from what it is about (type, key, recipient and a discriminator such
as the bounce class or a reply's Message-ID), never from when it was emitted: a delivery
recorded twice, or an emission retried, gives the same id, so the application can drop the
second copy (delivery is at least once).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from producer.events import event_id, iso, job_body

SENT, BOUNCED, COMPLAINED = "message.sent", "message.bounced", "message.complained"
UNSUBSCRIBED, FAILED, REPLIED = "message.unsubscribed", "message.failed", "message.replied"
TYPES: tuple[str, ...] = (SENT, BOUNCED, COMPLAINED, UNSUBSCRIBED, FAILED, REPLIED)

MAX_JOB_BYTES = 60_000  # beanstalkd's default job size is 65,535 bytes; long replies are cut to fit


class EventError(ValueError):
    """A job on the events tube that is no event (damaged, or put by another program)."""


@dataclass(frozen=True)
class Event:
    type: str
    key: str
    recipient: str
    template: str = ""
    entities: Mapping[str, Any] = field(default_factory=dict)  # the job's entity references
    details: Mapping[str, Any] = field(default_factory=dict)  # the type's own fields (docs/events.md)
    at: float = 0.0  # when it happened (epoch seconds); now when left 0
    discriminator: str = ""  # what tells two events of one type, key and recipient apart

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise EventError(f"unknown event type {self.type!r}; the types are {', '.join(TYPES)}")
        if not self.at:
            object.__setattr__(self, "at", time.time())

    @property
    def id(self) -> str:
        return event_id(self.type, self.key, self.recipient, self.discriminator)

    def payload(self) -> dict[str, Any]:
        """The webhook body (Standard Webhooks: ``type``, ``timestamp``, ``data``)."""
        data = {"key": self.key, "recipient": self.recipient, "template": self.template,
                "entities": dict(self.entities), **self.details}
        return {"type": self.type, "timestamp": iso(self.at), "data": data}

    def job(self) -> bytes:
        """The body of its job on the events tube: the id, the time it happened, the payload."""
        body = job_body(self.id, self.at, self.payload())
        if len(body) > MAX_JOB_BYTES:
            body = job_body(self.id, self.at, _shorten(self.payload(), len(body)))
        return body


@dataclass(frozen=True)
class Queued:
    """An event as read back from its job: what the deliverer sends."""
    id: str
    at: float
    type: str
    body: bytes  # the HTTP body, exactly as signed

    @classmethod
    def from_job(cls, raw: bytes) -> "Queued":
        try:
            job = json.loads(raw)
            payload = job["payload"]
            kind = payload["type"]
            if not isinstance(job["id"], str) or not job["id"] or kind not in TYPES:
                raise ValueError("no id, or an unknown type")
            return cls(job["id"], float(job["at"]), kind, _dump(payload))
        except (ValueError, KeyError, TypeError) as exc:
            raise EventError(f"not an event job: {exc}") from None


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _shorten(payload: dict[str, Any], size: int) -> dict[str, Any]:
    """The long text fields of a payload (a reply's text and HTML) cut so the job fits."""
    data = dict(payload["data"])
    excess = size - MAX_JOB_BYTES + 1000
    for name in ("html", "text", "reason", "reply"):
        value = data.get(name)
        if isinstance(value, str) and excess > 0 and value:
            keep = max(0, len(value.encode()) - excess)
            cut = value.encode()[:keep].decode("utf-8", "ignore")
            excess -= len(value.encode()) - len(cut.encode())
            data[name] = cut
            data["truncated"] = True
    return {**payload, "data": data}
