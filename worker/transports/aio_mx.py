"""Direct MX delivery on the event loop: a queue per destination domain, as Postfix's queue
manager schedules per destination, so a slow domain never holds mail for another.

Each send waits its turn at its domain's gate (``BEANMAIL_MX_CONNECTIONS_PER_DOMAIN`` sessions
at once in this process), then tries the domain's MX hosts by preference, each address in turn,
on sessions kept per MX address (``RelayPool``, the relay client, without certificate checks:
opportunistic STARTTLS as MTAs do). DNS answers come from the blocking resolver in a worker
thread (they are cached for their TTL), so a slow DNS server never stalls the loop. With a
fleet cap (``BEANMAIL_MX_FLEET_CONNECTIONS_PER_DOMAIN``) sessions are kept per domain and MX
address, and each holds one of the domain's slots in the shared store while it is open (the
threaded transport's ``FleetSlots``): none free defers the message, at no cost of an attempt.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, Sequence

from ..outcomes import Deferred, Greylisted, RetryPolicy, Wait, Withheld
from ..settings import Settings, SmtpTarget
from .aio import RelayPool
from .mx import FleetSlots, MxResolver
from .protocol import Reply


class FleetFull(Wait):
    """Every connection the fleet allows to a domain is open elsewhere: no failure, the message
    waits a second (a delay of its own, so no attempt is spent) and no other MX host is tried."""


class _DomainSlots:
    """One domain's share of the fleet's slots, for the sessions of its pools."""

    def __init__(self, fleet: FleetSlots, domain: str) -> None:
        self.fleet, self.domain = fleet, domain

    async def take(self) -> str:
        holder = self.fleet.new_holder()
        if not await asyncio.to_thread(self.fleet.take, self.domain, holder):
            raise FleetFull(f"{self.domain}: all {self.fleet.cap} connections of the fleet are open", RetryPolicy.busy)
        return holder

    async def renew(self, holder: str) -> bool:
        return await asyncio.to_thread(self.fleet.take, self.domain, holder)

    def give_back(self, holder: str) -> None:
        self.fleet.drop(self.domain, holder)  # one short statement, when a connection closes


class MxPool:
    def __init__(self, resolver: MxResolver, *, port: int = 25, timeout: float = 30.0, data_timeout: float = 600.0,
                 helo: str = "", per_domain: int = 2, fleet: FleetSlots | None = None) -> None:
        self.resolver = resolver
        self.fleet = fleet
        self.port = port
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or socket.getfqdn()  # once: a lookup per new MX host would stall the loop
        self.per_domain = per_domain
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._hosts: dict[tuple[str, str], RelayPool] = {}

    @classmethod
    def from_settings(cls, s: Settings) -> "MxPool":
        fleet = None
        if s.mx_fleet_connections_per_domain:
            from ..store import Store

            fleet = FleetSlots(Store(s.store), s.mx_fleet_connections_per_domain)
        return cls(MxResolver(s.dns, s.dns_timeout), port=s.mx_port, timeout=s.smtp_timeout,
                   data_timeout=s.smtp_data_timeout, helo=s.helo_name, per_domain=s.mx_connections_per_domain,
                   fleet=fleet)

    def _host(self, domain: str, address: str) -> RelayPool:
        """Sessions to one MX address: shared by every domain it serves, or with a fleet cap one
        pool per domain, whose connections hold that domain's slots."""
        key = (domain if self.fleet is not None else "", address)
        pool = self._hosts.get(key)
        if pool is None:
            slots = _DomainSlots(self.fleet, domain) if self.fleet is not None else None
            pool = self._hosts[key] = RelayPool(SmtpTarget(address, self.port, "opportunistic"),
                                                timeout=self.timeout, data_timeout=self.data_timeout,
                                                helo=self.helo, verify=False, slots=slots)
        return pool

    async def send(self, sender: str, recipients: Sequence[str], message: bytes,
                   before_end: Callable[[], None] | None = None) -> Reply:
        """``before_end``: the pipeline's gate, called before the end of data (RelayPool.send)."""
        domains = {r.rpartition("@")[2].lower() for r in recipients}
        if len(domains) != 1:
            raise Deferred("direct delivery sends one domain per message")  # the pipeline never does
        domain = domains.pop()
        gate = self._gates.get(domain)
        if gate is None:
            gate = self._gates[domain] = asyncio.Semaphore(self.per_domain)
        async with gate:  # the domain's queue: other domains' mail goes on meanwhile
            return await self._deliver(domain, sender, recipients, message, before_end)

    async def _deliver(self, domain: str, sender: str, recipients: Sequence[str], message: bytes,
                       before_end: Callable[[], None] | None) -> Reply:
        failures: list[str] = []
        greylisted = False
        for mx in await asyncio.to_thread(self.resolver.exchangers, domain):
            addresses = await asyncio.to_thread(self.resolver.addresses, mx.host)
            if not addresses:
                failures.append(f"{mx.host}: no address")
            for address in addresses:
                try:
                    return await self._host(domain, address).send(sender, recipients, message, before_end)
                except (Withheld, FleetFull):
                    raise  # the worker stopped it (its claim is gone), or the fleet's slots are taken
                except Deferred as exc:  # this host would not take it now: the next one may
                    greylisted = greylisted or isinstance(exc, Greylisted)
                    failures.append(f"{mx.host}[{address}]: {exc.reason}")
        # greylisted by a host and refused by the others: retried as greylisting is, not backed off
        outcome = Greylisted if greylisted else Deferred
        raise outcome(f"every MX host of {domain} failed: " + "; ".join(failures[-4:]))

    async def close(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        for pool in hosts:
            await pool.close()
