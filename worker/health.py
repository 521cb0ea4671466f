"""Whether mail can go out right now, said as the reasons it cannot: the one judgement behind
`beanmail status` (exit 1) and the console's /healthz (503).

Down when: a beanstalkd server or the store does not answer; the relay (or, for direct MX, the DNS
server) does not answer; a tube holds ready jobs and no worker watches it; the oldest urgent job
waits longer than ``BEANMAIL_URGENT_MAX_AGE``.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.resolver
import greenstalk

from producer.client import connect
from producer.envelope import PRIORITIES

from .outcomes import Outcome
from .settings import Settings


def problems(settings: Settings, servers: list[dict[str, Any]], timeout: float = 2.0) -> list[str]:
    """Why mail cannot go out, beyond a beanstalkd server or the store not answering (each caller
    says those in its own words). ``servers``: each server's view as `ops.status` lists it."""
    found = _unwatched(servers)
    found += _stale_urgent(settings, timeout)
    outbound = relay_problem(settings, timeout) if settings.transport == "smtp" else dns_problem(settings, min(timeout, settings.dns_timeout))
    if outbound:
        found.append(outbound)
    return found


def _unwatched(servers: list[dict[str, Any]]) -> list[str]:
    out = []
    for server in servers:
        for t in server.get("tubes", []):
            if t["ready"] and not t["watching"] and not t["paused"]:
                where = f" on {server['url']}" if len(servers) > 1 else ""
                out.append(f"no worker watches {t['tube']}{where}: {t['ready']} job(s) ready")
    return out


def _stale_urgent(settings: Settings, timeout: float) -> list[str]:
    """The oldest urgent job waiting (ready, or delayed for a retry) past the limit, per server."""
    out = []
    for url in settings.beanstalk_urls:
        try:
            with connect(url, timeout=timeout, encoding=None) as client:
                client.use(PRIORITIES["urgent"][0])
                ages = []
                for peek in (client.peek_ready, client.peek_delayed):
                    try:
                        ages.append(int(client.stats_job(peek())["age"]))
                    except greenstalk.NotFoundError:
                        pass
        except OSError:
            continue  # said once already, as the server's own error
        if ages and max(ages) > settings.urgent_max_age:
            out.append(f"the oldest urgent job has waited {max(ages)} s (BEANMAIL_URGENT_MAX_AGE"
                       f" {settings.urgent_max_age:g} s)")
    return out


def relay_problem(settings: Settings, timeout: float) -> str:
    """Mail of some priority has no relay that answers: a session opened with each relay as a
    worker opens it (greeting, STARTTLS, AUTH), then closed. One relay down of several is no
    problem (its mail fails over); every relay of a priority down is."""
    from .relays.plan import RelayPlan, relay_name

    plan = RelayPlan.from_settings(settings)
    answers = probe_relays(settings, timeout)
    if len(answers) == 1:
        [why] = answers.values()
        return f"relay: {why}" if why else ""
    stuck = [p for p, targets in plan.routes.items() if all(answers[relay_name(t)] for t in targets)]
    if not stuck:
        return ""
    names = dict.fromkeys(relay_name(t) for p in stuck for t in plan.routes[p])
    return (f"relay: none answers for {', '.join(stuck)} mail: "
            + "; ".join(f"{n}: {answers[n]}" for n in names))


def probe_relays(settings: Settings, timeout: float) -> dict[str, str]:
    """Each relay's name -> why it does not answer ("" when it does)."""
    from .relays.plan import RelayPlan, relay_name
    from .transports.smtp import SmtpSession

    answers = {}
    for target in RelayPlan.from_settings(settings).relays:
        session = SmtpSession(target, timeout=timeout, helo=settings.helo_name, cafile=settings.smtp_cafile)
        session.relay = True
        try:
            session.connect()
            answers[relay_name(target)] = ""
        except Outcome as exc:
            answers[relay_name(target)] = exc.reason
        finally:
            session.close()
    return answers


def dns_problem(settings: Settings, timeout: float) -> str:
    """Direct MX needs a DNS server that answers (any answer, NXDOMAIN included)."""
    from .transports.mx import MxResolver

    resolver = MxResolver(settings.dns, timeout).resolver
    try:
        resolver.resolve("localhost.", "A", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        pass
    except dns.exception.DNSException as exc:
        return f"DNS: {settings.dns or 'the system resolver'} does not answer: {exc}"
    return ""
