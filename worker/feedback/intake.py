"""What a bounce or complaint does, whichever way it came (an MTA's pipe, IMAP, a webhook).

A report is tied to one delivery only through a VERP token that verifies and that the store
knows; anything else (forged, damaged, a message we never sent) is kept as ``unmatched`` and
suppresses nobody. A token acts only on the one recipient it was made for: a message sent to
several recipients in one transaction shares one return path, so a DSN or ARF report through it
cannot show whose it is (any recipient could forge one naming another) and is kept, unmatched.
A provider's signed event names its recipient itself (the webhook narrows the match to it).

A matched hard bounce suppresses at once; soft bounces of ``soft_bounce_limit`` messages within
``soft_bounce_window`` (one message reported many times counts once) suppress for
``soft_suppression_days``, urgent mail still going; a complaint or an unsubscribe at once, with
that source, urgent mail still going. The delivery's own row in the log says what came back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..logs import get_logger, mask
from ..settings import Settings
from ..events import hooks as events
from ..store import Store
from . import verp
from .brake import Brake
from .parse import Failure, Report, parse


@dataclass(frozen=True)
class Handled:
    bounce_id: str
    classification: str  # hard | soft | complaint | unsubscribe | delayed | unmatched | ignored | replay
    address: str = ""
    key: str = ""
    suppressed: bool = False
    detail: str = ""  # for an ignored report: why


@dataclass(frozen=True)
class Match:
    token: str
    key: str
    recipient: str  # the message's recipients, comma-separated (narrowed to one by a provider's event)
    bulk: bool

    @property
    def recipients(self) -> list[str]:
        return [r for r in self.recipient.split(",") if r]

    def narrowed(self, address: str) -> "Match | None":
        """The match for one recipient a provider's signed event names; None if it names none of
        the message's recipients."""
        address = address.strip().lower()
        return replace(self, recipient=address) if address in self.recipients else None


class Intake:
    def __init__(self, settings: Settings, store: Store, brake: Brake | None = None) -> None:
        self.settings = settings
        self.store = store
        self.brake = brake or Brake(settings, store)

    def match(self, addresses: list[str]) -> tuple[Match | None, str]:
        """The delivery one of ``addresses`` (a VERP return path) names, or None and why not."""
        if not self.settings.return_path:
            return None, "no BEANMAIL_RETURN_PATH: bounces cannot be tied to a message"
        why = "no return path of ours"
        for address in addresses:
            token = verp.token_in(address, self.settings.return_path)
            if token is None:
                continue
            tid = verp.verify(token, self.settings.verp_secret)
            if tid is None:
                why = f"return path token does not verify: {address}"
                continue
            found = self.store.message_for_token(tid)
            if found is None:
                why = f"return path names no message we sent: {address}"
                continue
            return Match(tid, found[0], found[1], found[3]), ""
        return None, why

    def match_token(self, token: str) -> tuple[Match | None, str]:
        """A bare token, as a provider's webhook hands it back (see outbound.PROVIDER_HEADERS)."""
        tid = verp.verify(token, self.settings.verp_secret) if self.settings.verp_secret else None
        if tid is None:
            return None, f"token does not verify: {token[:40]!r}"
        found = self.store.message_for_token(tid)
        if found is None:
            return None, "token names no message we sent"
        return Match(tid, found[0], found[1], found[3]), ""

    def handle_message(self, raw: bytes, *, source: str = "pipe", recipient: str = "") -> list[Handled]:
        """One message as an MTA delivered it; ``recipient`` is its envelope recipient when the
        MTA says (Postfix pipe's ``${original_recipient}``)."""
        report = parse(raw)
        addresses = [recipient] if recipient else []
        match, why = self.match([*addresses, *report.return_paths])
        text = raw.decode("utf-8", "replace").replace("\x00", "")  # PostgreSQL text holds no NUL
        return self.apply(report, match, why, source=source, raw=text)

    def apply(self, report: Report, match: Match | None, why: str, *, source: str, raw: str) -> list[Handled]:
        log = get_logger()
        if report.ignored:  # nothing a bounce (auto-replies, delivery notices, unreadable mail, ARF not-spam)
            bid = self.store.record_bounce(source=source, kind=report.kind, classification="ignored",
                                           address=report.complained,
                                           detail=report.feedback_type or report.note or "not a bounce",
                                           raw=raw)
            log.info("feedback ignored", source=source, kind=report.kind, feedback_type=report.feedback_type or None,
                     reason=report.note or None)
            return [Handled(bid, "ignored", detail=report.feedback_type or report.note or "not a bounce")]
        if match is None:
            address = report.complained or (report.failures[0].address if report.failures else "")
            bid = self.store.record_bounce(source=source, kind=report.kind, classification="unmatched",
                                           address=address, detail=why, raw=raw)
            log.warning("feedback unmatched: nobody suppressed", source=source, kind=report.kind, reason=why)
            return [Handled(bid, "unmatched", address)]
        if len(match.recipients) != 1:
            address = report.complained or (report.failures[0].address if report.failures else "")
            detail = (f"the return path of {match.key} is shared by {len(match.recipients)} recipients: a report"
                      " through it cannot show whose it is, nobody suppressed")
            bid = self.store.record_bounce(source=source, kind=report.kind, classification="unmatched",
                                           address=address, key=match.key, detail=detail, raw=raw)
            log.warning("feedback unmatched: nobody suppressed", source=source, kind=report.kind, reason=detail)
            return [Handled(bid, "unmatched", address, match.key)]
        if report.complaint:
            return events.feedback(self.settings, self.store, [self._complaint(report, match, source, raw)])
        handled = [self._bounce(self._failure(report, match), match, source, raw, report.kind)]
        if match.bulk and any(h.classification in ("hard", "soft", "refused") for h in handled):
            self.brake.check()
        return events.feedback(self.settings, self.store, handled)  # message.bounced/.complained (worker/events)

    @staticmethod
    def _failure(report: Report, match: Match) -> Failure:
        """The report's failure, for the one recipient the token was made for: a DSN names the
        address the last MTA tried (a forward may differ), so the token's recipient is what is
        suppressed, whatever address the report names."""
        [ours] = match.recipients
        failures = report.failures or [Failure(ours, "failed", "", "no recipient in the report")]
        f = next((f for f in failures if f.address == ours), None) \
            or next((f for f in failures if f.action == "failed"), failures[0])
        return replace(f, address=ours)  # its status, diagnostic and reason kept

    def _bounce(self, f: Failure, match: Match, source: str, raw: str, kind: str) -> Handled:
        s = self.settings
        classification = f.classification
        bid = self.store.record_bounce(source=source, kind=kind,
                                       classification=classification, address=f.address, key=match.key,
                                       status=f.status, detail=f.diagnostic, raw=raw)
        suppressed = False
        if classification in ("hard", "soft", "refused"):  # refused: the address is fine, never suppressed
            self.store.note_bounce(match.key, f"bounced after it was accepted ({classification}): {f.status}".strip(),
                                   f.diagnostic)
        if classification == "hard":
            self.store.suppress(f.address, f"hard bounce {f.status}: {f.diagnostic}"[:500], "bounce")
            suppressed = True
        elif classification == "soft":
            count = self.store.soft_bounces(f.address, since=_now() - s.soft_bounce_window)
            if count >= s.soft_bounce_limit:
                until = _now() + s.soft_suppression_days * 86400
                self.store.suppress(f.address, f"{count} soft bounces within {s.soft_bounce_window:g}s (one per"
                                    f" message), last {f.status}: {f.diagnostic}"[:500], "soft-bounce", until=until)
                suppressed = True
        get_logger().info("bounce", source=source, classification=classification, status=f.status,
                          to=mask(f.address) if s.mask_addresses else f.address, suppressed=suppressed)
        return Handled(bid, classification, f.address, match.key, suppressed)

    def unsubscribe(self, match: Match | None, why: str, address: str, *, source: str, detail: str,
                    raw: str) -> Handled:
        """A provider's word that the recipient left (a link, a list-unsubscribe, its own list):
        suppressed with source ``unsubscribe``, urgent mail still going. Unmatched: nobody."""
        if match is not None and len(match.recipients) != 1:
            match, why = None, f"{match.key} went to {len(match.recipients)} recipients and the event names none"
        if match is None:
            bid = self.store.record_bounce(source=source, kind="webhook", classification="unmatched",
                                           address=address, detail=why, raw=raw)
            get_logger().warning("feedback unmatched: nobody suppressed", source=source, kind="unsubscribe", reason=why)
            return Handled(bid, "unmatched", address)
        [ours] = match.recipients
        bid = self.store.record_bounce(source=source, kind="webhook", classification="unsubscribe", address=ours,
                                       key=match.key, detail=detail, raw=raw)
        self.store.suppress(ours, f"{detail} ({match.key})"[:500], "unsubscribe")
        get_logger().info("unsubscribe", source=source, to=mask(ours) if self.settings.mask_addresses else ours)
        return Handled(bid, "unsubscribe", ours, match.key, True)

    def ignore(self, *, source: str, address: str, detail: str, raw: str, key: str = "") -> Handled:
        """An event that carries no signal for the suppression list, kept with why."""
        bid = self.store.record_bounce(source=source, kind="webhook", classification="ignored", address=address,
                                       key=key, detail=detail, raw=raw)
        get_logger().info("feedback ignored", source=source, detail=detail)
        return Handled(bid, "ignored", address, key)

    def _complaint(self, report: Report, match: Match, source: str, raw: str) -> Handled:
        [address] = match.recipients  # the one the token (or the provider's event) names
        bid = self.store.record_bounce(source=source, kind=report.kind, classification="complaint", address=address,
                                       key=match.key, status=report.feedback_type,
                                       detail=f"complaint ({report.feedback_type})", raw=raw)
        self.store.suppress(address, f"complaint ({report.feedback_type}) about {match.key}"[:500], "complaint")
        self.store.note_complaint(match.token, match.key, f"complaint ({report.feedback_type}) after delivery")
        get_logger().warning("complaint", source=source, feedback_type=report.feedback_type,
                             to=mask(address) if self.settings.mask_addresses else address)
        if match.bulk:
            self.brake.check()
        return Handled(bid, "complaint", address, match.key, True)


def _now() -> float:
    import time

    return time.time()
