"""What the console shows, read from beanstalkd and the delivery store; shared by the pages and
/metrics, so that both say the same."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import greenstalk

from producer.client import connect

from .. import redact
from ..logs import mask, mask_text
from ..ops import TUBES
from ..settings import Settings
from ..store import LATENCY_BUCKETS, Store

STATES = ("ready", "reserved", "delayed", "buried")
PLOTTED = ("sent", "deferred", "bounced", "poison", "skipped", "exhausted")


@dataclass
class Beanstalk:
    url: str
    error: str = ""
    version: str = ""
    workers: int = 0  # connections that reserve: every worker loop and fan-out
    up: dict[str, bool] = field(default_factory=dict)  # each server: did it answer
    tubes: list[dict[str, Any]] = field(default_factory=list)


def servers(settings: Settings) -> list[str]:
    """Every beanstalkd server of the fleet (a comma-separated BEANMAIL_BEANSTALK_URL names several)."""
    return list(getattr(settings, "beanstalk_urls", None) or [settings.beanstalk_url])


def beanstalk(settings: Settings, timeout: float = 3.0) -> Beanstalk:
    """Every tube's counts, summed over the servers, and the age of its oldest job. beanstalkd
    lists no tube's jobs, so "oldest" is the oldest of the jobs it can show: the next ready, the
    next delayed and the first buried one."""
    urls = servers(settings)
    out = Beanstalk(", ".join(urls))
    tubes: dict[str, dict[str, Any]] = {}
    errors = []
    for url in urls:
        one = _server(url, timeout)
        out.up[url] = not one.error
        if one.error:
            errors.append(f"{url}: {one.error}" if len(urls) > 1 else one.error)
            continue
        out.version, out.workers = one.version, out.workers + one.workers
        for t in one.tubes:
            total = tubes.setdefault(t["tube"], dict(t, ready=0, reserved=0, delayed=0, buried=0, watching=0,
                                                     paused=0, oldest=0))
            for k in ("ready", "reserved", "delayed", "buried", "watching"):
                total[k] += t[k]
            total["paused"], total["oldest"] = max(total["paused"], t["paused"]), max(total["oldest"], t["oldest"])
    out.error = "; ".join(errors)
    names = list(tubes)
    out.tubes = [tubes[t] for t in [t for t in TUBES if t in names] + sorted(set(names) - set(TUBES))]
    return out


def _server(url: str, timeout: float) -> Beanstalk:
    out = Beanstalk(url)
    try:
        client = connect(url, timeout=timeout, encoding=None)
    except OSError as exc:
        out.error = f"unreachable: {exc}"
        return out
    try:
        with client:
            stats = client.stats()
            out.version, out.workers = str(stats.get("version", "")), int(stats["current-workers"])
            for tube in sorted(client.tubes()):
                s = client.stats_tube(tube)
                if tube == "default" and not any(int(s[f"current-jobs-{state}"]) for state in STATES):
                    continue  # every connection's tube until it says `use`: shown when a job landed there
                client.use(tube)
                oldest = 0
                for peek in (client.peek_ready, client.peek_delayed, client.peek_buried):
                    try:
                        oldest = max(oldest, int(client.stats_job(peek())["age"]))
                    except greenstalk.NotFoundError:
                        pass
                out.tubes.append({
                    "tube": tube, "ready": int(s["current-jobs-ready"]), "reserved": int(s["current-jobs-reserved"]),
                    "delayed": int(s["current-jobs-delayed"]), "buried": int(s["current-jobs-buried"]),
                    # this connection watches `default` too (every connection does): not a worker
                    "watching": int(s["current-watching"]) - (tube == "default"), "paused": int(s["pause-time-left"]),
                    "oldest": oldest,
                })
    except (OSError, greenstalk.Error) as exc:
        out.error = f"failed: {exc}"
    return out


def rates(store: Store, minutes: int = 180, now: float | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """Messages per minute by outcome over the last ``minutes``, oldest first; every outcome of
    PLOTTED appears, the others when they occurred."""
    last = int((time.time() if now is None else now) // 60)
    first = last - minutes + 1
    series: dict[str, list[int]] = {o: [0] * minutes for o in PLOTTED}
    for minute, outcome, n in store.console_rates(first):
        if first <= minute <= last:
            series.setdefault(outcome, [0] * minutes)[minute - first] += n
    return list(range(first, last + 1)), series


def quantile(buckets: list[int], q: float, largest: float | None = None) -> float | None:
    """The ``q`` quantile of a bucketed latency, interpolated inside its bucket as Prometheus'
    histogram_quantile does, with the largest value seen as the bucket's top when it is lower
    (so that p99 never exceeds what any message took); None without data."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        if seen + n >= rank and n:
            lower = LATENCY_BUCKETS[i - 1] if i else 0.0
            upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else (largest or lower)
            if largest:
                upper = max(lower, min(upper, largest))
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return largest or LATENCY_BUCKETS[-1]


def latency(store: Store, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    since = int((time.time() if now is None else now) // 60) - minutes + 1
    buckets, total, largest = store.console_latency(since)
    count = sum(buckets)
    return {"count": count, "p50": quantile(buckets, 0.5, largest), "p99": quantile(buckets, 0.99, largest),
            "mean": total / count if count else None, "max": largest if count else None}


def latency_series(store: Store, minutes: list[int]) -> dict[str, list[float | None]]:
    """p50 and p99 of each minute's sent mail (None for a minute that sent nothing)."""
    if not minutes:
        return {"p50": [], "p99": []}
    first = minutes[0]
    out: dict[str, list[float | None]] = {"p50": [None] * len(minutes), "p99": [None] * len(minutes)}
    for minute, buckets, largest in store.console_latency_by_minute(first):
        if first <= minute <= minutes[-1]:
            out["p50"][minute - first] = quantile(buckets, 0.5, largest)
            out["p99"][minute - first] = quantile(buckets, 0.99, largest)
    return out


def domains(store: Store, settings: Settings, hours: float = 3, now: float | None = None,
            limit: int = 20) -> list[dict[str, Any]]:
    """The busiest recipient domains over the window, from the workers' counts: every deferral
    counts (a message deferred twice, then sent, is 2 deferred and 1 sent)."""
    since = int((time.time() if now is None else now) // 60) - int(hours * 60) + 1
    table: dict[str, dict[str, Any]] = {}
    for domain, outcome, n in store.domain_figures(since):
        row = table.setdefault(domain, {"domain": domain, "sent": 0, "deferred": 0, "bounced": 0, "other": 0})
        row[outcome if outcome in ("sent", "deferred", "bounced") else "other"] += n
    for row in table.values():
        row["rate"] = settings.rate_for(row["domain"]) if row["domain"] != "(other)" else 0
        row["total"] = row["sent"] + row["deferred"] + row["bounced"] + row["other"]
    return sorted(table.values(), key=lambda r: (r["domain"] == "(other)", -r["total"]))[:limit]


def brake(store: Store, settings: Settings) -> dict[str, Any]:
    """The bulk brake (worker.feedback.brake): engaged or not, and the rates it judges."""
    try:
        from ..feedback.brake import Brake
    except ImportError:
        return {"state": "not installed", "detail": "", "engaged": False}
    b = Brake(settings, store)
    if not b.enabled:
        return {"state": "off", "detail": "BEANMAIL_BRAKE_WINDOW is 0", "engaged": False}
    r = b.rates()
    judged = (f"bounces {r['bounce_rate']:.1%}, complaints {r['complaint_rate']:.2%} over the last"
              f" {r['sent']} bulk deliveries (window {r['window']})")
    if r["engaged"]:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(r["since"])))  # type: ignore[arg-type]
        return {"state": "ENGAGED", "engaged": True,
                "detail": f"since {since}: {r['reason']}; mail.bulk and mailout hold until `beanmail resume`"}
    if r["unjudged"]:
        return {"state": "not judged", "detail": r["unjudged"], "engaged": False}
    return {"state": "released", "detail": judged, "engaged": False}


def registered(store: Store, settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """The worker registry (worker/registry.py) as it stands, read only: a running worker silent
    past BEANMAIL_LOST_AFTER shows as "silent" (the workers themselves mark it lost)."""
    now = time.time() if now is None else now
    lost_after = float(getattr(settings, "lost_after", 60.0))
    try:
        rows = store.all("SELECT host, pid, tubes, version, state, started_at, last_seen, jobs_done, current_job"
                         " FROM workers ORDER BY host, pid")
    except Exception:  # noqa: BLE001 - a store from before the registry: no table, nothing to show
        return []
    out = []
    for host, pid, tubes, version, state, started, seen, done, job in rows:
        if state == "running" and now - seen > lost_after:
            state = "silent"
        out.append({"host": host, "pid": int(pid), "tubes": tubes, "version": version, "state": state,
                    "started_at": float(started), "seen_ago": max(0.0, now - float(seen)), "jobs_done": int(done),
                    "current_job": job})
    return out


def fmt_seconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{value / 3600:.1f} h"


# -- job bodies -------------------------------------------------------------------------------------
SHOWN_BODY = 16_384  # characters of a body a page shows; the rest is cut, saying how much


def envelope_of(body: str | bytes) -> dict[str, Any] | None:
    """The job's envelope as an object: a signed v2 job's inner envelope (its ``signed`` value,
    or the text it holds in the deprecated string form), its signature dropped. None when the
    body is not a JSON object (not JSON, not UTF-8, a list, nested too deep for the parser)."""
    try:
        obj = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    signed = obj.get("signed")
    if isinstance(signed, str):
        try:
            signed = json.loads(signed)
        except (ValueError, RecursionError):
            signed = None
    if isinstance(signed, dict):
        return signed
    return {k: v for k, v in obj.items() if k != "sig"}


def shown_body(body: str | bytes, masked: bool) -> str:
    """A job body for a page: pretty-printed, signatures and secrets hidden, addresses masked;
    a body that is not a JSON object as text (undecodable bytes replaced), cut at SHOWN_BODY."""
    obj = envelope_of(body)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if obj is None:
        text = body
    else:
        try:
            text = json.dumps(redact.redact_fields(obj), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):  # nested past the encoder's depth
            text = body
    if len(text) > SHOWN_BODY:
        text = text[:SHOWN_BODY] + f"\n… ({len(text) - SHOWN_BODY:,} more characters not shown)"
    text = redact.text(text)
    return mask_text(text) if masked else text


def summary(body: str, masked: bool) -> tuple[str, str]:
    """(template, recipient) of a job body, as far as it can be read."""
    obj = envelope_of(body) or {}
    template = str(obj.get("template") or obj.get("kind") or "")[:100]
    to = obj.get("to")
    if isinstance(to, list):
        first = to[0] if to else ""
        more = f" (+{len(to) - 1})" if len(to) > 1 else ""
    else:
        first, more = to, ""
    if isinstance(first, dict):
        first = first.get("address") or first.get("email") or ""
    address = str(first or "")[:320]
    if address and masked:
        address = mask(address) if "@" in address and "<" not in address else mask_text(address)
    return template, address + more


def latency_empty() -> dict[str, Any]:
    return {"count": 0, "p50": None, "p99": None, "mean": None}
