"""What a bounce or complaint does, whichever way it came (an MTA's pipe, IMAP, a webhook).

A report is tied to one delivery only through a VERP token that verifies and that the store
knows; anything else (forged, damaged, a message we never sent) is kept as ``unmatched`` and
suppresses nobody. A matched hard bounce suppresses at once; soft bounces after
``soft_bounce_limit`` within ``soft_bounce_window``; a complaint at once, with source
``complaint``. The delivery's own row in the log says what came back.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    classification: str  # hard | soft | complaint | delayed | unmatched | ignored
    address: str = ""
    key: str = ""
    suppressed: bool = False


@dataclass(frozen=True)
class Match:
    token: str
    key: str
    recipient: str
    bulk: bool


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
        text = raw.decode("utf-8", "replace")
        return self.apply(report, match, why, source=source, raw=text)

    def apply(self, report: Report, match: Match | None, why: str, *, source: str, raw: str) -> list[Handled]:
        log = get_logger()
        if report.kind == "unknown" or (report.kind == "arf" and not report.complaint):
            bid = self.store.record_bounce(source=source, kind=report.kind, classification="ignored",
                                           address=report.complained, detail=report.feedback_type or "not a bounce",
                                           raw=raw)
            log.info("feedback ignored", source=source, kind=report.kind, feedback_type=report.feedback_type or None)
            return [Handled(bid, "ignored")]
        if match is None:
            address = report.complained or (report.failures[0].address if report.failures else "")
            bid = self.store.record_bounce(source=source, kind=report.kind, classification="unmatched",
                                           address=address, detail=why, raw=raw)
            log.warning("feedback unmatched: nobody suppressed", source=source, kind=report.kind, reason=why)
            return [Handled(bid, "unmatched", address)]
        if report.complaint:
            return events.feedback(self.settings, self.store, [self._complaint(report, match, source, raw)])
        handled = [self._bounce(f, match, source, raw, report.kind) for f in self._failures(report, match)]
        if match.bulk and any(h.classification in ("hard", "soft") for h in handled):
            self.brake.check()
        return events.feedback(self.settings, self.store, handled)  # message.bounced/.complained (worker/events)

    @staticmethod
    def _failures(report: Report, match: Match) -> list[Failure]:
        """The report's failures for the message's own recipient(s): a DSN names the address the
        last MTA tried (a forward may differ), so the token's recipient is what is suppressed."""
        ours = match.recipient.split(",")
        failures = report.failures or [Failure(ours[0], "failed", "", "no recipient in the report")]
        out = []
        for f in failures:
            address = f.address if f.address in ours else ours[0] if len(ours) == 1 else ""
            if address:
                out.append(Failure(address, f.action, f.status, f.diagnostic, f.detected, f.permanent))
        return out[:len(ours)] or [Failure(ours[0], failures[0].action, failures[0].status, failures[0].diagnostic,
                                           failures[0].detected, failures[0].permanent)]

    def _bounce(self, f: Failure, match: Match, source: str, raw: str, kind: str) -> Handled:
        s = self.settings
        classification = f.classification
        bid = self.store.record_bounce(source=source, kind=kind,
                                       classification=classification, address=f.address, key=match.key,
                                       status=f.status, detail=f.diagnostic, raw=raw)
        suppressed = False
        if classification in ("hard", "soft"):
            self.store.note_bounce(match.key, f"bounced after it was accepted ({classification}): {f.status}".strip(),
                                   f.diagnostic)
        if classification == "hard":
            self.store.suppress(f.address, f"hard bounce {f.status}: {f.diagnostic}"[:500], "bounce")
            suppressed = True
        elif classification == "soft":
            count = self.store.soft_bounces(f.address, since=_now() - s.soft_bounce_window)
            if count >= s.soft_bounce_limit:
                self.store.suppress(f.address, f"{count} soft bounces within {s.soft_bounce_window:g}s, last"
                                    f" {f.status}: {f.diagnostic}"[:500], "bounce")
                suppressed = True
        get_logger().info("bounce", source=source, classification=classification, status=f.status,
                          to=mask(f.address) if s.mask_addresses else f.address, suppressed=suppressed)
        return Handled(bid, classification, f.address, match.key, suppressed)

    def _complaint(self, report: Report, match: Match, source: str, raw: str) -> Handled:
        address = match.recipient.split(",")[0]
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
