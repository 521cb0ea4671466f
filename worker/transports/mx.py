"""Direct delivery: find the recipient domain's mail exchangers with dnspython and hand the
message to the first that takes it, as a mail server does (RFC 5321 section 5)."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import dns.exception
import dns.name
import dns.resolver

from ..identity import host_name
from ..outcomes import Bounced, Deferred, Greylisted, Outage, RetryPolicy, Wait, Withheld
from ..settings import Settings, SmtpTarget
from .smtp import _GREYLIST, Reply, SmtpSession


@dataclass(frozen=True)
class Mx:
    preference: int
    host: str


class MxResolver:
    """MX lookups cached for their TTL; equal preferences come back in a fresh random order."""

    def __init__(self, nameserver: str = "", timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if nameserver:
            host, port = _split_hostport(nameserver)
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.timeout = min(timeout, 2.0)
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list]] = {}
        self._lock = threading.Lock()

    def _query(self, name: str, rdtype: str) -> list:
        """Records of one type, [] when the name exists without them; raises Bounced for a name
        that does not exist and Deferred for a DNS failure."""
        key = (name, rdtype)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            answer = self.resolver.resolve(name, rdtype, search=False)
            records, ttl = list(answer), answer.rrset.ttl if answer.rrset is not None else 0
        except dns.resolver.NXDOMAIN:
            raise Bounced(f"domain {name} does not exist (NXDOMAIN)", hard=True) from None
        except dns.resolver.NoAnswer as exc:
            records, ttl = [], _negative_ttl(exc)
        except dns.resolver.NoNameservers as exc:
            raise Outage(f"DNS {rdtype} {name}: SERVFAIL ({exc})") from None
        except dns.exception.Timeout:
            raise Outage(f"DNS {rdtype} {name}: timed out") from None
        except dns.exception.DNSException as exc:
            raise Deferred(f"DNS {rdtype} {name}: {type(exc).__name__}: {exc}") from None
        with self._lock:
            self._cache[key] = (now + ttl, records)
        return records

    def exchangers(self, domain: str) -> list[Mx]:
        records = self._query(domain, "MX")
        if not records:
            # RFC 5321 5.1: no MX, the domain's own address is the implicit MX
            if self._query(domain, "A") or self._query(domain, "AAAA"):
                return [Mx(0, domain)]
            raise Bounced(f"domain {domain} has neither MX nor address records", hard=True)
        mxs = [Mx(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records]
        if len(mxs) == 1 and mxs[0].host in ("", "."):
            raise Bounced(f"domain {domain} accepts no mail (null MX, RFC 7505)", hard=True)
        mxs = [m for m in mxs if m.host not in ("", ".")]
        random.shuffle(mxs)
        return sorted(mxs, key=lambda m: m.preference)  # stable: equal preferences stay shuffled

    def addresses(self, host: str) -> list[str]:
        try:
            found = [r.address for r in self._query(host, "A")] + [r.address for r in self._query(host, "AAAA")]
        except Bounced:
            return []  # an MX host that does not exist: try the next one
        return found


def _negative_ttl(exc: dns.resolver.NoAnswer) -> int:
    response = exc.kwargs.get("response") if hasattr(exc, "kwargs") else None
    for rrset in getattr(response, "authority", []) or []:
        return min(rrset.ttl, 300)
    return 60


def _split_hostport(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


class FleetSlots:
    """The fleet's connections per recipient domain, counted in the shared store: a connection
    takes a slot before it opens, renews it at each use and gives it back when it closes. A
    slot not renewed for ``lease`` seconds (a crashed host, a long-idle connection) is free."""

    def __init__(self, store: Any, cap: int, lease: float = 300.0) -> None:
        self.store = store
        self.cap = cap
        self.lease = lease
        self._lock = threading.Lock()  # one store connection for the process's loops
        self._ids = itertools.count(1)

    def new_holder(self) -> str:
        return f"{host_name()}:{os.getpid()}:mx{next(self._ids)}"

    def take(self, domain: str, holder: str) -> bool:
        with self._lock:
            return self.store.take_mx_slot(domain, holder, self.cap, self.lease)

    def drop(self, domain: str, holder: str) -> None:
        with self._lock:
            try:
                self.store.drop_mx_slot(domain, holder)
            except Deferred:  # the store is down: the slot frees itself when its lease runs out
                pass


class MxTransport:
    def __init__(self, resolver: MxResolver, *, port: int = 25, timeout: float = 30.0, helo: str = "",
                 per_domain: int = 2, data_timeout: float = 600.0, fleet: FleetSlots | None = None) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.helo = helo
        self.per_domain = per_domain
        self.fleet = fleet
        self._sessions: dict[str, list[SmtpSession]] = defaultdict(list)  # idle, per domain
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: Settings) -> "MxTransport":
        fleet = None
        if s.mx_fleet_connections_per_domain:
            from ..store import Store

            fleet = FleetSlots(Store(s.store), s.mx_fleet_connections_per_domain)
        return cls(MxResolver(s.dns, s.dns_timeout), port=s.mx_port, timeout=s.smtp_timeout,
                   helo=s.helo_name, per_domain=s.mx_connections_per_domain, data_timeout=s.smtp_data_timeout,
                   fleet=fleet)

    def _slot(self, domain: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._slots.get(domain)
            if slot is None:
                slot = self._slots[domain] = threading.BoundedSemaphore(self.per_domain)
            return slot

    def send(self, sender: str, recipients: Sequence[str], message: bytes,
             touch: Callable[[], None] = lambda: None, before_end: Callable[[], None] | None = None) -> Reply:
        domains = {r.rpartition("@")[2].lower() for r in recipients}
        if len(domains) != 1:
            raise Deferred("direct delivery sends one domain per message")  # the pipeline never does
        domain = domains.pop()
        slot = self._slot(domain)
        if not slot.acquire(timeout=self.timeout):
            raise Wait(f"{domain}: all {self.per_domain} connections busy", RetryPolicy.busy)
        try:
            return self._deliver(domain, sender, recipients, message, touch, before_end)
        finally:
            slot.release()

    def _deliver(self, domain: str, sender: str, recipients: Sequence[str], message: bytes,
                 touch: Callable[[], None], before_end: Callable[[], None] | None = None) -> Reply:
        failures: list[str] = []
        # a kept-alive connection to this domain first: it is to one of its MX hosts already
        while True:
            with self._lock:
                session = self._sessions[domain].pop() if self._sessions[domain] else None
            if session is None:
                break
            holder = getattr(session, "holder", "")
            if holder and not self.fleet.take(domain, holder):  # type: ignore[union-attr]
                session.close()  # idle past its lease, and the fleet's slots are all taken meanwhile
                continue
            try:
                reply = self._try(domain, session, session.target.host, failures, sender, recipients, message, touch,
                                  before_end)
            finally:
                self._release_unless_kept(domain, holder)
            if reply is not None:
                return reply
        holder = self._new_holder(domain)
        try:
            for mx in self.resolver.exchangers(domain):
                touch()
                addresses = self.resolver.addresses(mx.host)
                if not addresses:
                    failures.append(f"{mx.host}: no address")
                for address in addresses:
                    session = SmtpSession(SmtpTarget(address, self.port, "opportunistic"), timeout=self.timeout,
                                          helo=self.helo, verify=False, data_timeout=self.data_timeout)
                    session.holder = holder  # type: ignore[attr-defined]
                    reply = self._try(domain, session, f"{mx.host}[{address}]", failures, sender, recipients,
                                      message, touch, before_end)
                    if reply is not None:
                        return reply
            reason = f"every MX host of {domain} failed: " + "; ".join(failures[-4:])
            # greylisted by a host and refused by the others: retried as greylisting is
            raise Greylisted(reason) if _GREYLIST.search(reason) else Deferred(reason)
        finally:
            self._release_unless_kept(domain, holder)

    def _new_holder(self, domain: str) -> str:
        """A fleet slot for a new connection (nothing without a fleet cap), or Deferred with a
        delay of its own: the domain's connections are all open elsewhere, which is no failure."""
        if self.fleet is None:
            return ""
        holder = self.fleet.new_holder()
        if not self.fleet.take(domain, holder):
            raise Wait(f"{domain}: all {self.fleet.cap} connections of the fleet are open", RetryPolicy.busy)
        return holder

    def _release_unless_kept(self, domain: str, holder: str) -> None:
        if not holder:
            return
        with self._lock:
            kept = any(getattr(s, "holder", "") == holder for s in self._sessions[domain])
        if not kept:
            self.fleet.drop(domain, holder)  # type: ignore[union-attr]

    def _try(self, domain: str, session: SmtpSession, label: str, failures: list[str], sender: str,
             recipients: Sequence[str], message: bytes, touch: Callable[[], None],
             before_end: Callable[[], None] | None = None) -> Reply | None:
        """One host's answer: its reply, None to move on to the next host, or Bounced (or the
        worker withheld the message: no other host is tried)."""
        try:
            reply = session.send(sender, recipients, message, touch, before_end)
        except Withheld:
            raise
        except Deferred as exc:
            session.close()
            failures.append(f"{label}: {exc.reason}")
            return None
        finally:
            if session.connected:
                self._keep(domain, session)
        return reply

    def _keep(self, domain: str, session: SmtpSession) -> None:
        if session.connected:
            with self._lock:
                idle = self._sessions[domain]
                if len(idle) < self.per_domain:
                    idle.append(session)
                    return
        session.close()

    def close(self) -> None:
        with self._lock:
            sessions = [(d, s) for d, idle in self._sessions.items() for s in idle]
            self._sessions.clear()
        for domain, s in sessions:
            s.close()
            if self.fleet is not None and getattr(s, "holder", ""):
                self.fleet.drop(domain, s.holder)  # type: ignore[attr-defined]
