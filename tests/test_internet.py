"""Direct MX delivery to a simulated internet of slow hosts (tests/internet.py): greylisting,
sessions closed with 421 mid-way, every message once, per-domain connection caps held."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from producer import Notifier
from worker.settings import Settings
from worker.store import Store

from .conftest import running_worker
from .internet import SimulatedInternet, domain
from .servers import wait_until

DOMAINS, PER_DOMAIN = 12, 4


@pytest.mark.parametrize("concurrency", [1, 16])  # threads; the event loop with a queue per domain
def test_direct_mx_to_slow_greylisting_hosts_delivers_each_message_once_within_the_caps(
        settings: Settings, notifier: Notifier, tmp_path: Path, concurrency: int) -> None:
    internet = SimulatedInternet(tmp_path / "internet", DOMAINS, delay=0.05, greylist=3,
                                 close_after_domains=3, close_after=2).start()
    try:
        # a generic deferral would wait 300 s here: greylisting is retried after its own delay, and
        # a 421 on a kept session moves the message to a fresh one
        mx = settings.replace(transport="mx", dns=internet.dns.address, mx_port=internet.port,
                              mx_connections_per_domain=2, backoff_base=300, backoff_max=600, max_attempts=8,
                              greylist_delay=1, concurrency=concurrency)
        everyone = [f"u{n}@{domain(i)}" for i in range(DOMAINS) for n in range(PER_DOMAIN)]
        for address in everyone:
            notifier.notify("welcome", address, {"name": "x"}, key=f"net:{address}")
        with running_worker(mx):
            store = Store(mx.store)
            wait_until(lambda: store.outcome_counts().get("sent", 0) == len(everyone), 60, "every message sent")
            counts = store.outcome_counts()
            store.close()
    finally:
        report = internet.stop()
    accepted = Counter(report["accepted"])
    assert counts == {"sent": len(everyone)}
    assert sorted(accepted) == sorted(everyone) and set(accepted.values()) == {1}  # each once
    assert report["greylisted"] == 3 * PER_DOMAIN and report["closed_421"] >= 3
    assert max(report["peak_sessions"].values()) <= 2  # one process: its per-domain cap
    if concurrency > 1:  # sessions to different domains side by side
        assert sum(1 for n in report["peak_sessions"].values() if n == 2) >= DOMAINS // 2
