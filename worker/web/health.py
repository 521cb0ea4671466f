"""/healthz: can mail go out right now — beanstalkd and the store answer, and nothing of
`worker.health` (relay or DNS, unwatched tubes, urgent mail waiting) is wrong. Unauthenticated (a
load balancer or supervisor probe has no password) and it says only what is down."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producer.client import connect

from .. import health
from ..ops import server_status
from ..store import StoreCorrupt, StoreUnavailable
from .figures import servers

if TYPE_CHECKING:
    from .app import Console


def check(console: "Console", timeout: float = 2.0) -> list[str]:
    problems, views = [], []
    for url in servers(console.settings):
        try:
            with connect(url, timeout=timeout, encoding=None) as client:
                client.stats()
            views.append(server_status(url))
        except Exception as exc:  # noqa: BLE001 - whatever it is, beanstalkd does not answer
            problems.append(f"beanstalkd: not answering: {url}: {exc}")
    try:
        console.with_store(lambda s: s.schema())
    except (StoreUnavailable, StoreCorrupt) as exc:
        console.close()
        problems.append(f"store: not answering: {exc}")
    return problems + health.problems(console.settings, views, timeout)
