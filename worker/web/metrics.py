"""/metrics in Prometheus' text format, for the whole pool: a custom collector reads beanstalkd
and the delivery store (where every worker process adds its counts every few seconds) at each
scrape, so one scrape of the console sees every worker on every host."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client import exposition as _exposition

from ..store import LATENCY_BUCKETS, StoreCorrupt, StoreUnavailable
from . import figures, health

if TYPE_CHECKING:
    from .app import Console


class PoolCollector:
    def __init__(self, console: "Console") -> None:
        self.console = console

    def collect(self) -> Iterator[Metric]:
        problems = health.check(self.console)
        yield GaugeMetricFamily("beanmail_healthy", "1 when mail can go out, as /healthz judges (0: see /healthz"
                                " for why)", value=0 if problems else 1)
        up = GaugeMetricFamily("beanmail_up", "1 when the console could read the component at this scrape",
                               labels=["component"])
        bs = figures.beanstalk(self.console.settings)
        up.add_metric(["beanstalkd"], 0 if bs.error else 1)
        servers = GaugeMetricFamily("beanmail_beanstalkd_up", "1 when this beanstalkd server answered at this"
                                    " scrape; the tube figures sum the servers that did", labels=["server"])
        for url, answered in bs.up.items():
            servers.add_metric([url], 1 if answered else 0)
        yield servers
        if any(bs.up.values()):
            jobs = GaugeMetricFamily("beanmail_tube_jobs", "jobs in each tube by state", labels=["tube", "state"])
            for t in bs.tubes:
                for state in figures.STATES:
                    jobs.add_metric([t["tube"], state], t[state])
            yield jobs
            yield GaugeMetricFamily("beanmail_workers", "connections reserving jobs from beanstalkd"
                                    " (worker loops and fan-out)", value=bs.workers)
            watchers = GaugeMetricFamily("beanmail_tube_watchers", "connections watching each tube (workers)",
                                         labels=["tube"])
            for t in bs.tubes:
                watchers.add_metric([t["tube"]], t["watching"])
            yield watchers
            oldest = GaugeMetricFamily("beanmail_tube_oldest_job_seconds", "age of the oldest job beanstalkd"
                                       " shows in each tube (next ready, next delayed, first buried)", labels=["tube"])
            for t in bs.tubes:
                oldest.add_metric([t["tube"]], t["oldest"])
            yield oldest
        try:
            totals, (buckets, total_s, _), suppressed, brake, registry = self.console.with_store(
                lambda s: (s.console_totals(), s.console_latency(0), s.suppression_counts(),
                           figures.brake(s, self.console.settings), figures.registered(s, self.console.settings)))
        except (StoreUnavailable, StoreCorrupt):
            up.add_metric(["store"], 0)
            yield up
            return
        up.add_metric(["store"], 1)
        yield up
        messages = CounterMetricFamily("beanmail_messages", "jobs the mail workers finished, by outcome and tube",
                                       labels=["outcome", "tube"])
        for tube, outcome, n in totals:
            messages.add_metric([outcome, tube], n)
        yield messages
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily("beanmail_delivery_seconds", "enqueue to accepted by the SMTP server,"
                                    " sent mail", buckets=cumulative, sum_value=total_s)
        gauge = GaugeMetricFamily("beanmail_suppressed", "addresses on the suppression list by source",
                                  labels=["source"])
        for source in sorted({"bounce", "unsubscribe", "operator", *suppressed}):
            gauge.add_metric([source], suppressed.get(source, 0))
        yield gauge
        states = GaugeMetricFamily("beanmail_registered_workers", "worker processes in the registry by state"
                                   " (silent: running but not heard from for BEANMAIL_LOST_AFTER)", labels=["state"])
        counted: dict[str, int] = {}
        for w in registry:
            counted[w["state"]] = counted.get(w["state"], 0) + 1
        for state in sorted({"running", "disabled", "stopped", "lost", "silent", *counted}):
            states.add_metric([state], counted.get(state, 0))
        yield states
        yield GaugeMetricFamily("beanmail_brake_engaged", "1 while the bulk brake holds mail.bulk and mailout",
                                value=1 if brake["engaged"] else 0)
        yield from relay_metrics(self.console)


def relay_metrics(console: "Console") -> Iterator[Metric]:
    """Each relay's state as the workers last reported it (worker/relays/board.py)."""
    from ..relays import board
    from ..relays.plan import RelayPlan, relay_name

    settings = console.settings
    if settings.transport != "smtp":
        return
    try:
        seen = {r["relay"]: r for r in console.with_store(lambda s: board.read(s, settings.lost_after))}
    except (StoreUnavailable, StoreCorrupt):
        return
    plan = RelayPlan.from_settings(settings)
    configured = GaugeMetricFamily("beanmail_relay_configured", "1 for each relay a priority's mail goes through,"
                                   " by its place in that priority's list (0: tried first)",
                                   labels=["relay", "priority", "order"])
    for priority, targets in plan.routes.items():
        for i, t in enumerate(targets):
            configured.add_metric([relay_name(t), priority, str(i)], 1)
    yield configured
    up = GaugeMetricFamily("beanmail_relay_up", "1 unless a worker skips the relay as dead (it refused, timed out"
                           " or answered 421), as the workers reported within BEANMAIL_LOST_AFTER", labels=["relay"])
    skipped = GaugeMetricFamily("beanmail_relay_skipped_seconds", "seconds until a relay skipped as dead is tried"
                                " again (0: up)", labels=["relay"])
    pace = GaugeMetricFamily("beanmail_relay_bulk_pace", "bulk messages/s the workers may send the relay now"
                             " (AIMD, summed over worker processes)", labels=["relay"])
    sent = GaugeMetricFamily("beanmail_relay_bulk_sent_rate", "bulk messages/s the relay took over the last"
                             " seconds (summed over worker processes)", labels=["relay"])
    queue = GaugeMetricFamily("beanmail_relay_queue", "the relay MTA's queue length, as BEANMAIL_RELAY_QUEUE_COMMAND"
                              " last said", labels=["relay"])
    held = GaugeMetricFamily("beanmail_relay_bulk_held", "1 while bulk mail is held at the relay (its queue at"
                             " BEANMAIL_RELAY_QUEUE_HIGH, or unreadable)", labels=["relay"])
    for name, r in sorted(seen.items()):
        up.add_metric([name], 1 if r["up"] else 0)
        skipped.add_metric([name], 0 if r["up"] else max(0.0, r["skipped_until"] - time.time()))
        pace.add_metric([name], r["pace"])
        sent.add_metric([name], r["sent_rate"])
        if r["queue"] >= 0:
            queue.add_metric([name], r["queue"])
        held.add_metric([name], 1 if r["held"] else 0)
    yield from (up, skipped, pace, sent, queue, held)


def exposition(console: "Console") -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(console))
    # the classic text format every Prometheus reads (these names need none of 1.0.0's escaping)
    return generate_latest(registry), getattr(_exposition, "CONTENT_TYPE_PLAIN_0_0_4", _exposition.CONTENT_TYPE_LATEST)
