"""What waits in beanstalkd, as the console shows it: deferred mail (delayed jobs, with when
each is tried next and why it was put off, from the delivery log), and the events tube's
pending (ready), retried (delayed) and failed (buried) events. Found by ``jobscan``."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import ops
from ..logs import mask, mask_text
from ..settings import Settings
from ..store import Store
from . import figures
from .jobscan import FoundJob, Scan, scan
from .labels import subject_of

SHOWN = 200  # rows a page lists; the counts say how many there are


def deferred(settings: Settings, store: Store, masked: bool) -> tuple[list[dict[str, Any]], Scan]:
    """Delayed jobs of the mail tubes, soonest first: next attempt, attempts so far, the last
    reason the delivery log holds for the job's key."""
    found = scan(settings, ops.TUBES, {"delayed"})
    now = time.time()
    rows = []
    for job in sorted(found.jobs, key=lambda j: j.time_left)[:SHOWN]:
        envelope = figures.envelope_of(job.body) or {}
        template, recipient = figures.summary(job.body.decode("utf-8", "replace"), masked)
        key = envelope.get("id") if isinstance(envelope.get("id"), str) else ""
        record = store.deliveries(key=key, limit=1) if key and "\x00" not in key else []
        if record:
            last = record[0]
            said = last.reason + (f"; {last.reply}" if last.reply and last.reply not in last.reason else "")
            reason = said or f"({last.outcome}, no reason recorded)"
        else:
            reason = "not tried yet: queued with a delay" if job.releases == 0 else "(no record in the delivery log)"
        rows.append({"id": job.id, "tube": job.tube, "next_at": now + job.time_left, "time_left": job.time_left,
                     "attempts": job.releases, "key": mask_text(key) if masked else key, "template": template,
                     "recipient": recipient, "reason": mask_text(reason) if masked else reason,
                     "subject": mask_text(subject_of(envelope)) if masked else subject_of(envelope)})
    return rows, found


def events(settings: Settings, state: str, masked: bool) -> tuple[list[dict[str, Any]], Scan]:
    """The events tube's jobs in ``state`` (ready: pending, delayed: retried), oldest event first."""
    found = scan(settings, [settings.events_tube], {state})
    rows = [_event_row(job, masked) for job in found.jobs]
    rows.sort(key=lambda r: (r["time_left"], r["at"]) if state == "delayed" else (r["at"],))
    return rows[:SHOWN], found


def event_summary(body: bytes | str, masked: bool) -> dict[str, Any]:
    """(id, type, key, recipient, when it happened) of an event job; what cannot be read is ''."""
    try:
        job = json.loads(body)
        payload = job.get("payload") if isinstance(job, dict) else None
        data = payload.get("data") if isinstance(payload, dict) else None
    except (ValueError, TypeError, RecursionError):
        job, payload, data = None, None, None
    job, payload, data = (x if isinstance(x, dict) else {} for x in (job, payload, data))

    def text(value: Any) -> str:
        return value[:300] if isinstance(value, str) else ""
    recipient, key = text(data.get("recipient")), text(data.get("key"))
    at = job.get("at")
    return {"event": text(job.get("id")), "type": text(payload.get("type")) or "(not an event)", "key":
            mask_text(key) if masked else key, "recipient": (mask(recipient) if "@" in recipient else recipient)
            if masked else recipient, "template": text(data.get("template")),
            "at": float(at) if isinstance(at, (int, float)) and at == at and abs(at) < 1e11 else 0.0}


def _event_row(job: FoundJob, masked: bool) -> dict[str, Any]:
    return {"id": job.id, "releases": job.releases, "time_left": job.time_left, "next_at": time.time() + job.time_left,
            **event_summary(job.body, masked)}
