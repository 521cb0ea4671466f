"""The admission steps (worker/checks.py) one by one, in the unit tier: who the suppression list
holds back at which priority, a rate slot's wait, the relays' admission, and the order of steps."""

from __future__ import annotations

import pytest

from producer import envelope as env
from worker.checks import BatchFacts, Checks, RateLimit, RelayAdmission, Suppression
from worker.outcomes import Skipped, Wait

pytestmark = pytest.mark.unit


def mail(*addresses: str, priority: str = "normal") -> env.Envelope:
    return env.Envelope(kind="mail", id="k1", to=tuple(env.Recipient(a) for a in addresses), template="welcome",
                        priority=priority)


@pytest.mark.parametrize("source, priority, goes", [
    ("unsubscribe", "urgent", True), ("unsubscribe", "normal", False), ("unsubscribe", "bulk", False),
    ("complaint", "urgent", True), ("complaint", "normal", False), ("complaint", "bulk", False),
    ("soft-bounce", "urgent", True), ("soft-bounce", "normal", False), ("soft-bounce", "bulk", False),
    ("hard-bounce", "urgent", False), ("hard-bounce", "normal", False), ("hard-bounce", "bulk", False),
    ("operator", "urgent", False), ("operator", "normal", False), ("operator", "bulk", False),
])
def test_who_the_suppression_list_holds_back_at_which_priority(source: str, priority: str, goes: bool) -> None:
    """Urgent mail (a password reset) still reaches an address that unsubscribed, complained or
    soft-bounced; never one that hard-bounced or an operator suppressed."""
    facts = BatchFacts(suppressed={"zoe@example.com": (source, "why")})
    if goes:
        assert Suppression().check(mail("zoe@example.com", priority=priority), facts).to[0].address == "zoe@example.com"
    else:
        with pytest.raises(Skipped, match=f"suppressed \\({source}\\): z\\*\\*\\*@example.com"):
            Suppression().check(mail("zoe@example.com", priority=priority), facts)


def test_a_suppressed_recipient_is_left_out_and_the_others_still_get_it() -> None:
    facts = BatchFacts(suppressed={"bo@example.com": ("hard-bounce", "550")})
    kept = Suppression().check(mail("ann@example.com", "BO@example.com", "cy@example.com"), facts)
    assert [r.address for r in kept.to] == ["ann@example.com", "cy@example.com"]
    untouched = mail("ann@example.com")
    assert Suppression().check(untouched, facts) is untouched  # nothing suppressed: the same envelope


class Slots:
    """The store's rate slots as a table: domain -> seconds until the slot booked for it."""

    def __init__(self, waits: dict[str, float]) -> None:
        self.waits, self.asked = waits, []

    def take_slot(self, domain: str, rate: float, key: str) -> float:
        self.asked.append((domain, rate, key))
        return self.waits.get(domain, 0.0)


class Rates:
    def rate_for(self, domain: str) -> float:
        return {"slow.example": 2.0, "wait.example": 2.0}.get(domain, 0.0)


@pytest.mark.parametrize("domain, delay", [("fast.example", None), ("slow.example", None), ("wait.example", 3)])
def test_a_domains_rate_books_a_slot_and_waits_for_it_at_no_attempt(domain: str, delay: int | None) -> None:
    slots = Slots({"wait.example": 2.2})
    step = RateLimit(Rates(), slots)  # type: ignore[arg-type]
    if delay is None:
        assert step.check(mail(f"a@{domain}"), BatchFacts()).id == "k1"
    else:
        with pytest.raises(Wait) as waited:
            step.check(mail(f"a@{domain}"), BatchFacts())
        assert waited.value.delay == delay and "rate limit: wait.example at 2/s" in waited.value.reason
    assert slots.asked == ([] if domain == "fast.example" else [(domain, 2.0, "k1")])  # no limit: no slot asked


def test_the_relays_step_asks_the_book_to_admit_each_message() -> None:
    class Book:
        def __init__(self) -> None:
            self.admitted: list[str] = []

        def admit(self, envelope: env.Envelope) -> None:
            self.admitted.append(envelope.id)
            if envelope.priority == "bulk":
                raise Wait("relay r1: bulk held: queue 50,001 at or above 50,000", 30)
    book = Book()
    step = RelayAdmission(book)  # type: ignore[arg-type]
    assert step.check(mail("a@example.com"), BatchFacts()).id == "k1"
    with pytest.raises(Wait, match="bulk held"):
        step.check(mail("a@example.com", priority="bulk"), BatchFacts())
    assert book.admitted == ["k1", "k1"]


def test_the_steps_run_in_order_and_the_first_refusal_ends_the_run() -> None:
    ran: list[str] = []

    class Step:
        def __init__(self, name: str, refuse: bool = False) -> None:
            self.name, self.refuse = name, refuse

        def check(self, envelope: env.Envelope, batch: BatchFacts) -> env.Envelope:
            ran.append(self.name)
            if self.refuse:
                raise Skipped(f"{self.name} said no")
            return envelope
    checks = Checks([Step("a"), Step("b", refuse=True), Step("c")])
    with pytest.raises(Skipped, match="b said no"):
        checks.run(mail("a@example.com"), BatchFacts())
    assert ran == ["a", "b"]
    checks.register(Step("first"), before="a")
    assert checks.names == ["first", "a", "b", "c"]
