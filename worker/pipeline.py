"""The sending stage: one job body in, one Disposition out. Stages raise Outcomes; this module
records what happened in the store and lets ``outcomes.disposition`` decide the job's fate."""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

from producer import envelope as env
from producer.envelope import PRIORITIES, Envelope
from producer.unsubscribe import list_unsubscribe_headers

from . import mime
from .entities import Registry
from .logs import get_logger, mask
from .loop import Reserved
from .outcomes import Backoff, Bounced, Deferred, Disposition, Outcome, Poison, Skipped, disposition
from .render import Renderer
from .settings import Settings
from .store import Store, StoreUnavailable
from .transports.smtp import Reply
from .validate import check_envelope


_CRLF = re.compile(rb"\r\n|\r|\n")


class Transport(Protocol):
    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = ...) -> Reply: ...

    def close(self) -> None: ...


def make_transport(settings: Settings) -> Transport:
    if settings.transport == "mx":
        from .transports.mx import MxTransport

        return MxTransport.from_settings(settings)
    from .transports.smtp import RelayTransport

    return RelayTransport(settings.smtp, timeout=settings.smtp_timeout, helo=settings.helo_name,
                          cafile=settings.smtp_cafile)


@dataclass
class Result:
    disposition: Disposition
    envelope: Envelope | None
    reply: str = ""
    attempt: int = 1  # how often the store saw this key claimed


class Pipeline:
    def __init__(self, settings: Settings, store: Store, transport: Transport | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.transport = transport or make_transport(settings)
        self.registry = registry or Registry.from_settings(settings.entities)
        self.renderer = Renderer(settings.templates)
        self.sender = mime.sender_address(settings.from_addr)
        self.backoff = Backoff(settings.backoff_base, settings.backoff_max, settings.max_attempts)

    # -- the loop's Stage interface -------------------------------------------------------------
    def handle(self, job: Reserved) -> Disposition:
        started = time.monotonic()
        result = self.run(job.body, lambda: job.attempt, job.touch)
        d = result.disposition
        if d.action == "delete" and result.envelope is not None:
            # no round trip for stats on success: the tube its priority names, the store's count
            tube, attempt = PRIORITIES[result.envelope.priority][0], result.attempt
        else:
            tube, attempt = job.tube, job.attempt  # the loop needs the stats now anyway
        log_result(result, job_id=job.id, tube=tube, attempt=attempt, started=started,
                   mask_addresses=self.settings.mask_addresses)
        return d

    def reload(self) -> None:
        self.renderer = Renderer(self.settings.templates)

    def close(self) -> None:
        self.transport.close()

    def run(self, body: bytes, attempt: Callable[[], int], touch: Callable[[], None] = lambda: None) -> Result:
        envelope: Envelope | None = None
        claiming = claimed = False
        reply = ""
        claims = 1
        try:
            try:
                envelope = env.decode(body, self.settings.secret or None)
            except env.EnvelopeError as exc:
                raise Poison(f"bad envelope: {exc}") from None
            envelope = check_envelope(envelope)
            envelope = self._check_suppression(envelope)
            self._check_rate(envelope)
            claiming = True
            claims = self.store.claim(envelope.id, self._recipient(envelope), envelope.template,
                                      lease=self.settings.ttr)
            claimed = True
            message, recipients = self._build(envelope)
            sender = envelope.sender or self.sender.addr_spec  # a raw job may name its own
            reply = str(self.transport.send(sender, recipients, message, touch))
            error: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
            error = exc
            reply = getattr(exc, "reply", "")
        result = disposition(error, attempt, self.backoff)
        try:
            if envelope is not None and (claimed or not claiming):
                # before the claim nothing may overwrite another delivery's row of the same key
                self.store.finish(envelope.id, self._recipient(envelope), envelope.template,
                                  result.outcome, result.reason, reply, overwrite_final=claimed)
            if isinstance(error, Bounced) and error.hard and envelope is not None and envelope.kind == "mail":
                self.store.suppress(envelope.recipient.address, error.reason, "bounce")
        except StoreUnavailable as exc:
            # what happened stands (the mail went, or not); only its record is missing
            get_logger().error("delivery not recorded", key=envelope.id if envelope else None, error=exc.reason)
        return Result(result, envelope, reply, claims)

    @staticmethod
    def _recipient(envelope: Envelope) -> str:
        return ",".join(r.address.lower() for r in envelope.to)

    def _check_suppression(self, envelope: Envelope) -> Envelope:
        """The envelope without its suppressed recipients; Skipped when none is left."""
        kept, reasons = [], []
        for recipient in envelope.to:
            entry = self.store.suppressed(recipient.address)
            # transactional urgent mail (a password reset) may reach someone who unsubscribed
            # from notifications, never an address that hard-bounced
            if entry is None or (entry[0] == "unsubscribe" and envelope.priority == "urgent"):
                kept.append(recipient)
            else:
                reasons.append(f"suppressed ({entry[0]}): {mask(recipient.address)}")
        if not kept:
            raise Skipped("; ".join(reasons))
        return replace(envelope, to=tuple(kept)) if reasons else envelope

    def _list_headers(self, envelope: Envelope) -> dict[str, str]:
        """Bulk mail says what it is (RFC 2076 Precedence, RFC 2919 List-Id) and how to leave."""
        s = self.settings
        list_id = s.list_id or f"<{envelope.template.replace('/', '.')}.{self.sender.domain}>"
        headers = {"Precedence": "bulk", "List-Id": list_id}
        address = envelope.recipient.address
        if s.unsubscribe_url:
            headers.update(list_unsubscribe_headers(address, s.token_secret, url=s.unsubscribe_url,
                                                    mailto=s.unsubscribe_mailto, list_id=list_id,
                                                    ttl=s.unsubscribe_days * 86400))
        elif s.unsubscribe_mailto:
            headers["List-Unsubscribe"] = f"<mailto:{s.unsubscribe_mailto}?subject=unsubscribe>"
        return headers

    def _check_rate(self, envelope: Envelope) -> None:
        domain = envelope.to[0].address.rpartition("@")[2].lower()
        rate = self.settings.rate_for(domain)
        if rate > 0:
            wait = self.store.take_slot(domain, rate, envelope.id)
            if wait > 0:  # released until its booked slot: the worker is free for other domains' mail
                raise Deferred(f"rate limit: {domain} at {rate:g}/s", delay=max(1, math.ceil(wait)))

    def _build(self, envelope: Envelope) -> tuple[bytes, list[str]]:
        if envelope.kind == "raw":
            try:
                message = base64.b64decode(envelope.message, validate=True)
            except (binascii.Error, ValueError):
                raise Poison("raw job: 'message' is not base64") from None
            # SMTP wants CRLF; messages built with "\n" (Django's as_bytes() default) get it here
            return _CRLF.sub(b"\r\n", message), [r.address for r in envelope.to]
        if envelope.kind != "mail":
            raise Poison(f"kind {envelope.kind!r} does not belong on a mail tube")
        context = dict(envelope.context)
        context.update(envelope.recipient.context)
        context.update(self.registry.resolve(envelope.entities))
        context.setdefault("recipient", {"address": envelope.recipient.address,
                                         "name": envelope.recipient.name})
        rendered = self.renderer.render(envelope.template, context)
        headers = self._list_headers(envelope) if envelope.priority == "bulk" else {}
        headers.update(envelope.headers)  # an application's own list headers win
        message = mime.build(rendered, self.sender, envelope.recipient, headers)
        return message, [envelope.recipient.address]


def log_result(result: Result, *, job_id: int, tube: str, attempt: int, started: float,
               mask_addresses: bool = True) -> None:
    envelope = result.envelope
    d = result.disposition
    fields: dict[str, object] = {
        "job": job_id, "tube": tube, "attempt": attempt, "outcome": d.outcome,
        "action": d.action, "duration_ms": round((time.monotonic() - started) * 1000, 2),
    }
    if envelope is not None:
        fields["key"] = envelope.id
        fields["template"] = envelope.template
        if envelope.created_at:
            fields["age_ms"] = round((time.time() - envelope.created_at) * 1000, 1)  # enqueue -> now
        to = [r.address for r in envelope.to[:3]]
        fields["to"] = [mask(a) for a in to] if mask_addresses else to
    if d.reason:
        fields["reason"] = d.reason
    if d.delay:
        fields["delay"] = d.delay
    if result.reply:
        fields["reply"] = result.reply
    log = get_logger()
    level = "info" if d.outcome in ("sent", "skipped") else "warning"
    if d.outcome in ("poison", "exhausted"):
        level = "error"
    getattr(log, level)("job", **fields)


__all__ = ["Outcome", "Pipeline", "Result", "log_result", "make_transport"]
