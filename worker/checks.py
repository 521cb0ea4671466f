"""The admission steps: what a message passes after it is decoded and before it is claimed and
sent. Each step is one class with a ``name`` and ``check(envelope, batch)``, which returns the
envelope (fewer recipients, say) or raises an Outcome: ``Skipped`` (never sent: suppressed,
collected into a digest), ``Wait`` (later, at a time of its own and at no attempt: a rate slot,
quiet hours, the brake, a paced relay). The pipeline runs them in order for every message; a feature adds
its own by writing a class and registering it, as Dramatiq's middleware is added:

    class TenantQuota:
        name = "tenant-quota"
        def check(self, envelope, batch):
            if over_quota(envelope.context["tenant"]):
                raise Wait("tenant over its hourly quota", seconds_to_the_next_hour())
            return envelope

    pipeline.checks.register(TenantQuota(), before="rate")
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol

from producer.envelope import Envelope

from .logs import mask
from .outcomes import Skipped, Wait

if TYPE_CHECKING:
    from .digest.collect import Digests
    from .feedback.outbound import Outbound
    from .relays.book import RelayBook
    from .settings import Settings
    from .store import Store


@dataclass(frozen=True)
class BatchFacts:
    """What the pipeline read once for the whole batch (one query each), for the steps."""
    suppressed: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # address -> (source, reason)
    prefs: Mapping[str, Any] = field(default_factory=dict)  # address -> digest preferences


class Check(Protocol):
    name: str

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope: ...


class Checks:
    """The steps in the order they run; ``register`` adds one before or after a named step."""

    def __init__(self, steps: Iterable[Check] = ()) -> None:
        self.steps: list[Check] = list(steps)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def register(self, step: Check, *, before: str | None = None, after: str | None = None) -> None:
        if step.name in self.names:
            raise ValueError(f"a step named {step.name!r} is registered already")
        anchor = before or after
        if anchor is None:
            self.steps.append(step)
            return
        if anchor not in self.names:
            raise ValueError(f"no step named {anchor!r} to register {step.name!r} next to (steps: {self.names})")
        at = self.names.index(anchor) + (1 if after else 0)
        self.steps.insert(at, step)

    def run(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        for step in self.steps:
            envelope = step.check(envelope, batch)
        return envelope


# -- the steps every pipeline has --------------------------------------------------------------------

class Suppression:
    """Recipients on the suppression list are dropped; Skipped when none is left. Urgent mail (a
    password reset) still reaches an address that unsubscribed, complained or soft-bounced."""

    name = "suppression"
    PASSES_URGENT = ("unsubscribe", "complaint", "soft-bounce")

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        kept, reasons = [], []
        for recipient in envelope.to:
            entry = batch.suppressed.get(recipient.address.lower())
            if entry is None or (entry[0] in self.PASSES_URGENT and envelope.priority == "urgent"):
                kept.append(recipient)
            else:
                reasons.append(f"suppressed ({entry[0]}): {mask(recipient.address)}")
        if not kept:
            raise Skipped("; ".join(reasons))
        return replace(envelope, to=tuple(kept)) if reasons else envelope


class Digest:
    """Into the recipient's digest (Skipped), or held for their quiet hours (Deferred)."""

    name = "digest"

    def __init__(self, digests: "Digests") -> None:
        self.digests = digests

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        self.digests.divert(envelope, prefs=batch.prefs)
        return envelope


class RateLimit:
    """A domain's BEANMAIL_RATE_LIMITS: released until its booked slot, at no attempt."""

    name = "rate"

    def __init__(self, settings: "Settings", store: "Store") -> None:
        self.settings, self.store = settings, store

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        domain = envelope.to[0].address.rpartition("@")[2].lower()
        rate = self.settings.rate_for(domain)
        if rate > 0:
            wait = self.store.take_slot(domain, rate, envelope.id)
            if wait > 0:  # released until its booked slot: the worker is free for other domains' mail
                raise Wait(f"rate limit: {domain} at {rate:g}/s", wait)
        return envelope


class Brake:
    """Bulk mail held while the brake is on (too many bounces or complaints)."""

    name = "brake"

    def __init__(self, outbound: "Outbound") -> None:
        self.outbound = outbound

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        self.outbound.hold(envelope)
        return envelope


class RelayAdmission:
    """Bulk mail admitted only while its relay's queue is under the mark and its pace allows."""

    name = "relays"

    def __init__(self, book: "RelayBook") -> None:
        self.book = book

    def check(self, envelope: Envelope, batch: BatchFacts) -> Envelope:
        self.book.admit(envelope)
        return envelope


def standard_checks(settings: "Settings", store: "Store", digests: "Digests", outbound: "Outbound",
                    relays: "RelayBook | None") -> Checks:
    steps: list[Check] = [Suppression(), Digest(digests), RateLimit(settings, store), Brake(outbound)]
    if relays is not None:
        steps.append(RelayAdmission(relays))
    return Checks(steps)

