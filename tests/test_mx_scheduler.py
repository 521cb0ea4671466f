"""The direct-MX scheduler on the event loop (worker/transports/aio_mx.py), in the unit tier: a
queue per destination domain with its connection cap, MX hosts tried by preference, greylisting
and the fleet's slots, against fake DNS answers and fake hosts (no socket, no DNS server)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pytest

from worker.outcomes import Bounced, Deferred, Greylisted
from worker.transports.aio_mx import FleetFull, MxPool
from worker.transports.protocol import Reply

pytestmark = pytest.mark.unit


@dataclass
class Exchanger:
    host: str
    preference: int = 10


class Resolver:
    """DNS as a table: domain -> MX hosts (by preference), host -> addresses."""

    def __init__(self, mx: dict[str, list[str]], addresses: dict[str, list[str]]) -> None:
        self.mx, self.table = mx, addresses

    def exchangers(self, domain: str) -> list[Exchanger]:
        return [Exchanger(h, 10 * i) for i, h in enumerate(self.mx[domain])]

    def addresses(self, host: str) -> list[str]:
        return self.table.get(host, [])


@dataclass
class Host:
    """One MX address: answers each send after ``delay`` with ``outcome`` (a Reply or an Outcome
    to raise); counts the sends in progress at once."""
    outcome: object = field(default_factory=lambda: Reply(250, "ok"))
    delay: float = 0.0
    sent: list[str] = field(default_factory=list)
    busy: int = 0
    peak: int = 0

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        try:
            await asyncio.sleep(self.delay)
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            self.sent.extend(recipients)
            return self.outcome  # type: ignore[return-value]
        finally:
            self.busy -= 1

    async def close(self) -> None:
        pass


def pool(resolver: Resolver, hosts: dict[str, Host], per_domain: int = 1) -> MxPool:
    p = MxPool(resolver, per_domain=per_domain, helo="client.example")  # type: ignore[arg-type]
    p._host = lambda domain, address: hosts[address]  # type: ignore[method-assign,assignment]
    return p


def run(coroutine):  # noqa: ANN001, ANN201
    return asyncio.run(coroutine)


def test_a_domains_sends_wait_for_its_connection_cap_while_another_domain_goes_on() -> None:
    slow, fast = Host(delay=0.2), Host()
    mx = pool(Resolver({"slow.example": ["mx.slow"], "fast.example": ["mx.fast"]},
                       {"mx.slow": ["192.0.2.1"], "mx.fast": ["192.0.2.2"]}), {"192.0.2.1": slow, "192.0.2.2": fast})

    async def scenario() -> list[str]:
        order: list[str] = []

        async def send(to: str) -> None:
            await mx.send("s@example.org", [to], b"x")
            order.append(to)
        await asyncio.gather(*(send(f"u{i}@slow.example") for i in range(3)), send("a@fast.example"))
        return order
    order = run(scenario())
    assert slow.peak == 1 and len(slow.sent) == 3  # the cap: one session to the slow domain at a time
    assert order[0] == "a@fast.example"  # it did not wait behind the slow domain's queue


def test_the_cap_is_per_domain_not_per_process() -> None:
    hosts = {"192.0.2.1": Host(delay=0.05)}
    mx = pool(Resolver({"a.example": ["mx"], "b.example": ["mx"]}, {"mx": ["192.0.2.1"]}), hosts, per_domain=2)

    async def scenario() -> None:
        await asyncio.gather(*(mx.send("s@example.org", [f"u{i}@{d}"], b"x") for i in range(4)
                               for d in ("a.example", "b.example")))
    run(scenario())
    assert hosts["192.0.2.1"].peak == 4  # two per domain, two domains on one shared MX host


def test_the_next_mx_host_takes_what_the_first_defers_and_greylisting_is_kept_as_such() -> None:
    first, second = Host(outcome=Deferred("421 busy")), Host()
    mx = pool(Resolver({"d.example": ["mx1", "mx2"]}, {"mx1": ["192.0.2.1"], "mx2": ["192.0.2.2"]}),
              {"192.0.2.1": first, "192.0.2.2": second})
    assert run(mx.send("s@example.org", ["u@d.example"], b"x")) == Reply(250, "ok")
    assert second.sent == ["u@d.example"]
    grey = pool(Resolver({"d.example": ["mx1", "mx2"]}, {"mx1": ["192.0.2.1"], "mx2": ["192.0.2.2"]}),
                {"192.0.2.1": Host(outcome=Greylisted("451 4.7.1 greylisted")),
                 "192.0.2.2": Host(outcome=Deferred("connection refused"))})
    with pytest.raises(Greylisted, match="every MX host of d.example failed"):
        run(grey.send("s@example.org", ["u@d.example"], b"x"))


def test_a_bounce_ends_the_delivery_without_trying_another_host() -> None:
    first, second = Host(outcome=Bounced("550 5.1.1 no such user", hard=True)), Host()
    mx = pool(Resolver({"d.example": ["mx1", "mx2"]}, {"mx1": ["192.0.2.1"], "mx2": ["192.0.2.2"]}),
              {"192.0.2.1": first, "192.0.2.2": second})
    with pytest.raises(Bounced):
        run(mx.send("s@example.org", ["u@d.example"], b"x"))
    assert second.sent == []


def test_the_fleet_being_full_defers_at_no_attempt_and_tries_no_other_host() -> None:
    second = Host()
    mx = pool(Resolver({"d.example": ["mx1", "mx2"]}, {"mx1": ["192.0.2.1"], "mx2": ["192.0.2.2"]}),
              {"192.0.2.1": Host(outcome=FleetFull("d.example: all 1 connections of the fleet are open", delay=1)),
               "192.0.2.2": second})
    with pytest.raises(FleetFull) as full:
        run(mx.send("s@example.org", ["u@d.example"], b"x"))
    assert full.value.delay == 1 and second.sent == []


def test_a_host_without_addresses_is_named_and_a_message_for_two_domains_is_refused() -> None:
    mx = pool(Resolver({"d.example": ["gone"]}, {}), {})
    with pytest.raises(Deferred, match="gone: no address"):
        run(mx.send("s@example.org", ["u@d.example"], b"x"))
    with pytest.raises(Deferred, match="one domain per message"):
        run(mx.send("s@example.org", ["u@a.example", "v@b.example"], b"x"))
