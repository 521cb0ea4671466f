"""Direct MX delivery on the event loop: a queue per destination domain, as Postfix's queue
manager schedules per destination, so a slow domain never holds mail for another.

Each send waits its turn at its domain's gate (``BEANMAIL_MX_CONNECTIONS_PER_DOMAIN`` sessions
at once in this process), then tries the domain's MX hosts by preference, each address in turn,
on sessions kept per MX address (``RelayPool``, the relay client, without certificate checks:
opportunistic STARTTLS as MTAs do). DNS answers come from the blocking resolver in a worker
thread (they are cached for their TTL), so a slow DNS server never stalls the loop. The fleet cap
(``BEANMAIL_MX_FLEET_CONNECTIONS_PER_DOMAIN``) is the threaded transport's (worker/transports/mx.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, Sequence

from ..outcomes import Deferred, Greylisted, Withheld
from ..settings import Settings, SmtpTarget
from .aio import RelayPool
from .mx import MxResolver
from .protocol import Reply


class MxPool:
    def __init__(self, resolver: MxResolver, *, port: int = 25, timeout: float = 30.0, data_timeout: float = 600.0,
                 helo: str = "", per_domain: int = 2) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo or socket.getfqdn()  # once: a lookup per new MX host would stall the loop
        self.per_domain = per_domain
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._hosts: dict[str, RelayPool] = {}

    @classmethod
    def from_settings(cls, s: Settings) -> "MxPool":
        return cls(MxResolver(s.dns, s.dns_timeout), port=s.mx_port, timeout=s.smtp_timeout,
                   data_timeout=s.smtp_data_timeout, helo=s.helo_name, per_domain=s.mx_connections_per_domain)

    def _host(self, address: str) -> RelayPool:
        pool = self._hosts.get(address)
        if pool is None:
            pool = self._hosts[address] = RelayPool(SmtpTarget(address, self.port, "opportunistic"),
                                                    timeout=self.timeout, data_timeout=self.data_timeout,
                                                    helo=self.helo, verify=False)
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
                    return await self._host(address).send(sender, recipients, message, before_end)
                except Withheld:
                    raise  # the worker stopped it (its claim is gone): no other host either
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
