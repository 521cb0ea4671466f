"""The emission points' one-line calls: each turns what a stage recorded into events and hands
them to ``emit``. Every function here is a no-op unless BEANMAIL_EVENTS_URL is set, and none
raises: a failure to build an event is logged and the delivery, bounce or burial goes on.

- ``deliveries``: the pipeline recorded a batch (``Pipeline.conclude``): message.sent, and
  message.bounced for a refusal at the SMTP dialogue;
- ``buried``: the worker loop buried a job (poison, exhausted): message.failed;
- ``feedback``: the feedback intake recorded bounces and complaints after the send (DSNs from
  the pipe or IMAP, provider webhooks): message.bounced, message.complained.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from producer import envelope as env

from ..logs import get_logger
from ..settings import Settings
from .emit import emit
from .model import BOUNCED, COMPLAINED, FAILED, SENT, Event

if TYPE_CHECKING:
    from ..feedback.intake import Handled
    from ..delivery import Delivery, Result
    from ..store import Store

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def status_of(reply: str) -> str:
    """The RFC 3463 status in an SMTP reply (``5.1.1``), else its reply code (``550``), else ''."""
    found = _STATUS.search(reply)
    if found:
        return found.group(1)
    code = reply.strip()[:3]
    return code if code.isdigit() else ""


def deliveries(settings: Settings, store: "Store", batch: Sequence["Delivery"], results: Sequence["Result"]) -> None:
    """Events of a batch the pipeline just recorded; the entity references of what was sent are
    remembered for the bounces and complaints that may follow."""
    if not settings.events_url:
        return
    from ..outcomes import Bounced, Fate

    try:
        events, refs = [], []
        for d, result in zip(batch, results):
            envelope, outcome = result.envelope, result.disposition.outcome
            if envelope is None or outcome not in (Fate.SENT, Fate.BOUNCED):
                continue
            for r in envelope.to:
                if outcome == Fate.SENT:
                    events.append(Event(SENT, envelope.id, r.address, envelope.template, envelope.entities,
                                        {"reply": result.reply}))
                else:
                    hard = not isinstance(d.error, Bounced) or d.error.hard
                    events.append(Event(BOUNCED, envelope.id, r.address, envelope.template, envelope.entities,
                                        {"bounce": "hard" if hard else "soft", "status": status_of(result.reply),
                                         "reason": result.disposition.reason, "reply": result.reply,
                                         "source": "smtp"}, discriminator="hard" if hard else "soft"))
            if outcome == Fate.SENT and envelope.entities:
                refs.append((envelope.id, envelope.template, json.dumps(envelope.entities, sort_keys=True)))
        emit(settings, *events)
        if refs:
            store.remember_refs(refs)
    except Exception as exc:  # noqa: BLE001 - events never fail a delivery
        get_logger().exception("delivery events not emitted", error=repr(exc))


def buried(settings: Settings, store: "Store", body: bytes, outcome: str, reason: str) -> None:
    """message.failed for each recipient of a job the loop buried (its key and recipients read
    from the body, a large message's from its blob; a body that names none gives no event)."""
    if not settings.events_url:
        return
    try:
        envelope = _envelope(settings, store, body)
        if envelope is None:
            get_logger().warning("buried job names no message: no message.failed event", reason=reason[:200])
            return
        emit(settings, *(Event(FAILED, envelope.id, r.address, envelope.template, envelope.entities,
                               {"outcome": str(outcome), "reason": reason}, discriminator=str(outcome))
                         for r in envelope.to))
    except Exception as exc:  # noqa: BLE001
        get_logger().exception("failure event not emitted", error=repr(exc))


def _envelope(settings: Settings, store: "Store", body: bytes) -> env.Envelope | None:
    try:
        envelope = env.decode(body, settings.secret or None)  # a forged job names nobody we tell of
        if envelope.kind == "ref":
            blob = store.blob(envelope.ref)
            envelope = env.decode(blob, settings.secret or None) if blob is not None else None
    except env.EnvelopeError:
        return None
    return envelope if envelope is not None and envelope.to else None


def feedback(settings: Settings, store: "Store", handled: list["Handled"]) -> list["Handled"]:
    """message.bounced (after the send) and message.complained for what the intake recorded;
    returns ``handled`` (so the intake's ``return`` can pass through it)."""
    if not settings.events_url:
        return handled
    try:
        events = []
        for h in handled:
            if h.classification not in ("hard", "soft", "complaint") or not h.key:
                continue
            template, entities = _refs(store, h.key)
            found = next((b for b in store.bounces(limit=20, address=h.address) if b["id"] == h.bounce_id), {})
            source = found.get("source", "")
            if h.classification == "complaint":
                events.append(Event(COMPLAINED, h.key, h.address, template, entities,
                                    {"feedback_type": found.get("status", ""), "source": source,
                                     "suppressed": h.suppressed}))
            else:
                events.append(Event(BOUNCED, h.key, h.address, template, entities,
                                    {"bounce": h.classification, "status": found.get("status", ""),
                                     "reason": found.get("detail", ""), "source": source,
                                     "suppressed": h.suppressed}, discriminator=h.classification))
        emit(settings, *events)
    except Exception as exc:  # noqa: BLE001 - the bounce is recorded; its event is logged as missing
        get_logger().exception("feedback events not emitted", error=repr(exc))
    return handled


def _refs(store: "Store", key: str) -> tuple[str, Mapping[str, Any]]:
    found = store.refs_for(key)
    if found is not None:
        return found[0], json.loads(found[1])
    rows = store.deliveries(key=key, limit=1)
    return (rows[0].template if rows else ""), {}
