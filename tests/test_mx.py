"""Direct delivery against a real DNS server (dnsmasq) and real SMTP servers on 127.0.0.2, .3, ..."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer.client import connect
from worker.outcomes import Deferred
from worker.settings import Settings
from worker.store import Store
from worker.transports.mx import MxResolver
from worker.transports.smtp import Reply

from .conftest import run_burst, running_worker
from .servers import Dnsmasq, SmtpServer, common_free_port, wait_until

ZONE = [
    "mx-host=two.mx.example,mx1.two.mx.example,10",
    "mx-host=two.mx.example,mx2.two.mx.example,20",
    "host-record=mx1.two.mx.example,127.0.0.2",
    "host-record=mx2.two.mx.example,127.0.0.3",
    "host-record=aonly.mx.example,127.0.0.4",
    "dns-rr=nullmx.mx.example,15,000000",
    "mx-host=eq.mx.example,a.eq.mx.example,10",
    "mx-host=eq.mx.example,b.eq.mx.example,10",
    "host-record=a.eq.mx.example,127.0.0.5",
    "host-record=b.eq.mx.example,127.0.0.6",
    "mx-host=other.mx.example,mx.other.mx.example,10",
    "host-record=mx.other.mx.example,127.0.0.5",
]


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path / "dns", ZONE).start()
    yield server
    server.stop()


@pytest.fixture
def mx_port() -> int:
    return common_free_port([f"127.0.0.{i}" for i in range(2, 7)])


@pytest.fixture
def mx_settings(settings: Settings, dns: Dnsmasq, mx_port: int) -> Settings:
    return settings.replace(transport="mx", dns=dns.address, mx_port=mx_port, dns_timeout=1.0)


@pytest.fixture
def hosts(mx_port: int) -> Iterator[dict[str, SmtpServer]]:
    started: dict[str, SmtpServer] = {}

    def start(ip: str) -> SmtpServer:
        started[ip] = SmtpServer(ip, mx_port).start()
        return started[ip]
    yield start  # type: ignore[misc]
    for server in started.values():
        server.stop()


def outcome(settings: Settings, key: str) -> tuple[str, str, str]:
    row = Store(settings.store).deliveries(key=key)[0]
    return row.outcome, row.reason, row.reply


def test_the_most_preferred_mx_gets_the_mail(mx_settings: Settings, notifier: Notifier, hosts) -> None:
    first, second = hosts("127.0.0.2"), hosts("127.0.0.3")
    notifier.notify("welcome", "zoe@two.mx.example", {"name": "x"}, key="pref")
    run_burst(mx_settings)
    assert [m.rcpt_tos for m in first.wait_for(1)] == [["zoe@two.mx.example"]]
    assert second.messages == []
    assert outcome(mx_settings, "pref")[0] == "sent"


def test_first_mx_down_the_second_gets_it(mx_settings: Settings, notifier: Notifier, hosts) -> None:
    second = hosts("127.0.0.3")
    notifier.notify("welcome", "zoe@two.mx.example", {"name": "x"}, key="down1")
    run_burst(mx_settings)
    assert [m.rcpt_tos for m in second.wait_for(1)] == [["zoe@two.mx.example"]]


def test_a_4xx_from_the_first_mx_moves_on_to_the_second(mx_settings: Settings, notifier: Notifier, hosts) -> None:
    first, second = hosts("127.0.0.2"), hosts("127.0.0.3")
    first.handler.rcpt_replies = {"": "451 4.7.1 Greylisted, try again later"}
    notifier.notify("welcome", "zoe@two.mx.example", {"name": "x"}, key="grey")
    run_burst(mx_settings)
    assert first.messages == [] and len(second.wait_for(1)) == 1


def test_all_mx_hosts_failing_temporarily_defers(mx_settings: Settings, notifier: Notifier) -> None:
    job = notifier.notify("welcome", "zoe@two.mx.example", {"name": "x"}, key="alldown")
    run_burst(mx_settings)
    state, reason, _ = outcome(mx_settings, "alldown")
    assert state == "deferred" and "every MX host of two.mx.example failed" in reason
    assert "mx1.two.mx.example[127.0.0.2]" in reason and "mx2.two.mx.example[127.0.0.3]" in reason
    with connect(mx_settings.beanstalk_url, encoding=None) as c:
        assert c.stats_job(job)["state"] == "delayed"


def test_a_domain_with_only_an_address_record_is_its_own_mx(mx_settings: Settings, notifier: Notifier,
                                                            hosts) -> None:
    server = hosts("127.0.0.4")
    notifier.notify("welcome", "zoe@aonly.mx.example", {"name": "x"})
    run_burst(mx_settings)
    assert [m.rcpt_tos for m in server.wait_for(1)] == [["zoe@aonly.mx.example"]]


def test_null_mx_and_nonexistent_domains_bounce(mx_settings: Settings, notifier: Notifier) -> None:
    notifier.notify("welcome", "zoe@nullmx.mx.example", {"name": "x"}, key="null")
    notifier.notify("welcome", "zoe@nowhere.mx.example", {"name": "x"}, key="nx")
    run_burst(mx_settings)
    assert outcome(mx_settings, "null")[:2] == ("bounced", "domain nullmx.mx.example accepts no mail (null MX, RFC 7505)")
    assert outcome(mx_settings, "nx")[0] == "bounced" and "NXDOMAIN" in outcome(mx_settings, "nx")[1]
    assert Store(mx_settings.store).suppressed("zoe@nullmx.mx.example")[0] == "bounce"


def test_a_5xx_from_the_mx_bounces_with_its_enhanced_status(mx_settings: Settings, notifier: Notifier,
                                                            hosts) -> None:
    hosts("127.0.0.2")
    second = hosts("127.0.0.3")
    notifier.notify("welcome", "reject@two.mx.example", {"name": "x"}, key="5xx")
    run_burst(mx_settings)
    state, _, reply = outcome(mx_settings, "5xx")
    assert state == "bounced" and reply == "550 5.1.1 No such user"
    assert second.handler.connections == 0  # a permanent answer is not asked again elsewhere


def test_a_dns_server_that_does_not_answer_defers(settings: Settings, notifier: Notifier, mx_port: int) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        s = settings.replace(transport="mx", dns=f"127.0.0.1:{silent.getsockname()[1]}", mx_port=mx_port,
                             dns_timeout=0.5)
        notifier.notify("welcome", "zoe@two.mx.example", {"name": "x"}, key="dnsdown")
        run_burst(s)
    finally:
        silent.close()
    state, reason, _ = outcome(s, "dnsdown")
    assert state == "deferred" and "timed out" in reason


def test_mx_answers_are_cached_for_their_ttl_and_equal_preferences_shuffled(dns: Dnsmasq) -> None:
    now = [1000.0]
    resolver = MxResolver(dns.address, timeout=0.5, clock=lambda: now[0])
    orders = {tuple(m.host for m in resolver.exchangers("eq.mx.example")) for _ in range(40)}
    assert orders == {("a.eq.mx.example", "b.eq.mx.example"), ("b.eq.mx.example", "a.eq.mx.example")}
    dns.stop()
    assert {m.host for m in resolver.exchangers("eq.mx.example")} == {"a.eq.mx.example", "b.eq.mx.example"}
    now[0] += 301  # past local-ttl=300: asked again, and the server is gone
    with pytest.raises(Deferred, match="timed out"):
        resolver.exchangers("eq.mx.example")


def test_enhanced_status_codes_are_parsed() -> None:
    assert Reply(550, "5.1.1 No such user").enhanced == "5.1.1"
    assert Reply(451, "4.7.1 Greylisted").enhanced == "4.7.1"
    assert Reply(250, "Ok").enhanced == ""
    assert Reply(550, "4.1.1 inconsistent").enhanced == ""


def test_a_rate_limit_spreads_one_domain_and_does_not_hold_up_another(mx_settings: Settings, notifier: Notifier,
                                                                      hosts) -> None:
    limited, other = hosts("127.0.0.2"), hosts("127.0.0.5")
    arrivals: list[tuple[float, str]] = []
    for server in (limited, other):
        original = server.handler.handle_DATA

        async def recorded(srv, session, envelope, _orig=original):  # noqa: ANN001
            arrivals.append((time.monotonic(), envelope.rcpt_tos[0].split("@")[1]))
            return await _orig(srv, session, envelope)
        server.handler.handle_DATA = recorded  # type: ignore[method-assign]
    s = mx_settings.replace(rate_limits={"two.mx.example": 2.0})
    for i in range(5):
        notifier.notify("welcome", f"u{i}@two.mx.example", {"name": "x"})
    for i in range(3):
        notifier.notify("welcome", f"u{i}@other.mx.example", {"name": "x"})
    with running_worker(s):
        wait_until(lambda: len(arrivals) == 8, 30, "all 8 delivered")
    limited_times = [t for t, d in arrivals if d == "two.mx.example"]
    order = [d for _, d in arrivals]
    assert order[:4].count("other.mx.example") == 3  # the other domain's mail went at once
    # beanstalkd delays are whole seconds: the limit holds per second, not per half second
    assert all(sum(1 for t in limited_times if start <= t < start + 0.9) <= 2 for start in limited_times)
    assert limited_times[-1] - limited_times[0] >= 1.5  # 5 messages at 2/s: spread over about 2 s


def test_the_per_domain_connection_cap_holds_for_the_whole_process(mx_settings: Settings, hosts) -> None:  # noqa: ANN001
    """BEANMAIL_THREADS loops share one direct-MX transport: with a cap of one connection per
    domain, four loops open one connection between them (each had its own before)."""
    from .conftest import bare_env, beanmail

    server = hosts("127.0.0.4")
    server.handler.data_delay = 0.2  # slow enough that the four loops want the domain at once
    notifier = Notifier(mx_settings.beanstalk_url)
    for i in range(8):
        notifier.notify("welcome", f"u{i}@aonly.mx.example", {"name": f"u{i}"}, key=f"cap:{i}")
    env = bare_env(mx_settings, BEANMAIL_TRANSPORT="mx", BEANMAIL_DNS=mx_settings.dns,
                   BEANMAIL_MX_PORT=str(mx_settings.mx_port), BEANMAIL_MX_CONNECTIONS_PER_DOMAIN="1")
    beanmail("worker", "--burst", "--threads", "4", env=env)
    assert len(server.wait_for(8)) == 8
    assert server.handler.connections == 1


def test_several_beanstalkd_servers_share_one_event_loop_and_its_per_domain_cap(mx_settings: Settings, hosts,  # noqa: ANN001
                                                                                 tmp_path: Path) -> None:
    """Direct MX from two servers' loops in one process, on the event loop: one pool for both,
    so a cap of one connection per domain is one connection, whichever server the mail came from."""
    from .conftest import bare_env, beanmail
    from .servers import Beanstalkd

    second = Beanstalkd(tmp_path / "second").start()
    try:
        server = hosts("127.0.0.4")
        server.handler.data_delay = 0.1  # slow enough that both loops want the domain at once
        for url in (mx_settings.beanstalk_url, second.url):
            notifier = Notifier(url)
            for i in range(4):
                notifier.notify("welcome", f"u{i}-{url[-5:]}@aonly.mx.example", {"name": "u"}, key=f"two:{url}:{i}")
        env = bare_env(mx_settings, BEANMAIL_TRANSPORT="mx", BEANMAIL_DNS=mx_settings.dns,
                       BEANMAIL_BEANSTALK_URL=f"{mx_settings.beanstalk_url},{second.url}",
                       BEANMAIL_MX_PORT=str(mx_settings.mx_port), BEANMAIL_MX_CONNECTIONS_PER_DOMAIN="1")
        beanmail("worker", "--burst", "--threads", "4", env=env)
        assert len(server.wait_for(8)) == 8
        assert server.handler.connections == 1
    finally:
        second.stop(kill=True)


def test_a_fleet_cap_holds_across_worker_processes(mx_settings: Settings, hosts, tmp_path: Path) -> None:  # noqa: ANN001
    """Two worker processes (hosts of a fleet, on one store), each allowed two connections per
    domain, share one with BEANMAIL_MX_FLEET_CONNECTIONS_PER_DOMAIN=1: the domain's server sees a
    single connection, and the process without the slot defers (free) until the other took it all."""
    import subprocess

    from .conftest import ROOT, bare_env

    server = hosts("127.0.0.4")
    server.handler.data_delay = 0.1
    notifier = Notifier(mx_settings.beanstalk_url)
    for i in range(12):
        notifier.notify("welcome", f"u{i}@aonly.mx.example", {"name": f"u{i}"}, key=f"fleet-cap:{i}")
    env = bare_env(mx_settings, BEANMAIL_TRANSPORT="mx", BEANMAIL_DNS=mx_settings.dns, BEANMAIL_BACKOFF_BASE="1",
                   BEANMAIL_MX_PORT=str(mx_settings.mx_port), BEANMAIL_MX_FLEET_CONNECTIONS_PER_DOMAIN="1")
    procs = [subprocess.Popen([str(ROOT / ".venv/bin/beanmail"), "worker", "--threads", "2"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        assert len(server.wait_for(12, timeout=60)) == 12
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(30) == 0
    assert server.handler.connections == 1
    assert Store(mx_settings.store).all("SELECT count(*) FROM mx_slots")[0][0] == 0  # given back at exit
