"""Finding beanstalkd's jobs by state: beanstalkd lists no tube's jobs (``peek-delayed`` shows
only the next one), so the console asks ``stats-job`` for ids, newest first, until it has found
as many as the tubes' counts say there are, or has asked about ``budget`` ids. On loopback a
question costs about 45 µs: the default budget of 20,000 ids is under a second, and a scan
stops as soon as every job it looks for is found. Past the budget, each tube's next ready, next
delayed and first buried job (what ``peek`` shows) are added, so the next to go is never missed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import greenstalk

from producer.client import connect

from ..settings import Settings

BUDGET = 20_000


class ScanError(Exception):
    """beanstalkd could not be asked (one line for the page)."""


@dataclass(frozen=True)
class FoundJob:
    id: int
    tube: str
    state: str  # ready | reserved | delayed | buried
    pri: int
    age: int
    time_left: int  # seconds until a delayed job is ready (0 otherwise)
    releases: int
    body: bytes


@dataclass
class Scan:
    jobs: list[FoundJob] = field(default_factory=list)
    wanted: int = 0  # how many jobs of those tubes and states beanstalkd holds
    lowest: int = 0  # the lowest id asked about (the scan went from the top id down to here)
    top: int = 0

    @property
    def complete(self) -> bool:
        return len(self.jobs) >= self.wanted


def scan(settings: Settings, tubes: Iterable[str] | None, states: Iterable[str], budget: int = BUDGET,
         timeout: float = 5.0) -> Scan:
    """The jobs of ``tubes`` (every tube: None) in ``states``, newest id first."""
    states = frozenset(states)
    url = settings.beanstalk_urls[0]  # a fleet's first server, as the job pages and ``ops`` read
    try:
        client = connect(url, timeout=timeout, encoding=None)
    except (OSError, ValueError) as exc:
        raise ScanError(f"beanstalkd at {url} is unreachable: {exc}") from None
    try:
        with client:
            return _scan(client, None if tubes is None else frozenset(tubes), states, budget)
    except (OSError, greenstalk.Error) as exc:
        raise ScanError(f"beanstalkd at {url} failed: {exc or type(exc).__name__}") from None


def _scan(client: greenstalk.Client, tubes: frozenset[str] | None, states: frozenset[str], budget: int) -> Scan:
    out = Scan()
    present = client.tubes()
    names = [t for t in present if tubes is None or t in tubes]
    top = int(client.stats().get("total-jobs", 0))
    peeked: list[int] = []  # each tube's next ready, next delayed and first buried job
    for tube in names:
        s = client.stats_tube(tube)
        out.wanted += sum(int(s[f"current-jobs-{state}"]) for state in states)
        client.use(tube)
        for state, peek in (("ready", client.peek_ready), ("delayed", client.peek_delayed),
                            ("buried", client.peek_buried)):
            try:
                job_id = peek().id
            except greenstalk.NotFoundError:
                continue
            top = max(top, job_id)  # ids restored from a binlog may pass total-jobs
            if state in states:
                peeked.append(job_id)
    out.top = out.lowest = top + 1
    job_id = top
    while job_id > 0 and len(out.jobs) < out.wanted and top - job_id < budget:
        out.lowest = job_id
        try:
            stats = client.stats_job(job_id)
        except greenstalk.NotFoundError:
            job_id -= 1
            continue
        if stats["state"] in states and (tubes is None or stats["tube"] in tubes):
            try:
                body = client.peek(job_id).body
            except greenstalk.NotFoundError:  # deleted meanwhile
                job_id -= 1
                continue
            out.jobs.append(_found(stats, body))
        job_id -= 1
    if not out.complete:  # past the budget: at least what beanstalkd shows of each tube (the next to go)
        for job_id in sorted(set(peeked) - {j.id for j in out.jobs}, reverse=True):
            try:
                stats = client.stats_job(job_id)
                if stats["state"] in states:
                    out.jobs.append(_found(stats, client.peek(job_id).body))
            except greenstalk.NotFoundError:
                continue
    return out


def _found(stats: dict[str, Any], body: Any) -> FoundJob:
    return FoundJob(int(stats["id"]), str(stats["tube"]), str(stats["state"]), int(stats["pri"]), int(stats["age"]),
                    int(stats.get("time-left", 0)) if stats["state"] == "delayed" else 0, int(stats["releases"]),
                    body if isinstance(body, bytes) else str(body).encode())
