"""The console's pages: GET only, nothing changes (the POST actions are in ``actions``). Reads
go through ``figures`` and ``ops``; addresses are masked here, as the setting says."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote, urlencode


from producer.client import parse_recipient

from .. import ops
from ..logs import mask, mask_text
from .. import registry as worker_registry
from . import figures, mailouts, queues, subjects
from .filters import BuriedFilter, matching
from .jobscan import Scan, ScanError
from .labels import subject_of
from .plot import Series, line_plot
from .templates import CSS, ENV

if TYPE_CHECKING:
    from .app import Console, Request, Response


def _age(seconds: float | int | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _when(at: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "–"
    except (OverflowError, ValueError, OSError):  # a stored time no clock can show: shown as it is
        return str(at)


TITLES = {"overview.html": "Overview", "buried.html": "Buried jobs", "job.html": "Job", "log.html": "Delivery log",
          "suppressions.html": "Suppression list", "bounces.html": "Bounces", "deferred.html": "Deferred mail",
          "events.html": "Delivery events", "replies.html": "Replies", "mailout.html": "Mailout progress"}
REFRESH_CHOICES = (0, 5, 10, 30, 60)  # seconds between reloads the operator may pick (?refresh=)


def _refresh(req: "Request") -> int:
    asked = req.query.get("refresh", "")
    return int(asked) if asked.isdigit() and len(asked) < 4 and int(asked) in REFRESH_CHOICES else 0


def render(console: "Console", req: "Request", template: str, status: int = 200, **context: Any) -> "Response":
    from .app import Response

    context.setdefault("error", "")
    context.setdefault("title", TITLES[template])
    refresh = _refresh(req)
    kept = [(k, v) for k, v in req.query.items() if k not in ("refresh", "done")]
    # a reload repeats the page's query, without the flash of the action that led to it
    here_url = req.root + quote(req.path) + "?"
    refresh_url = here_url + urlencode([*kept, ("refresh", refresh)])
    refresh_links = [(s, here_url + urlencode([*kept, ("refresh", s)] if s else kept)) for s in REFRESH_CHOICES]
    page = ENV.get_template(template).render(
        root=req.root, here=context.pop("here", req.path), csrf=req.environ.get("beanmail.csrf", ""),
        refresh=refresh, refresh_url=refresh_url, refresh_links=refresh_links,
        beanstalk_url=console.settings.beanstalk_url, flash=req.query.get("done", ""), age=_age, when=_when,
        seconds=figures.fmt_seconds, **context)
    return Response(status, page)


def _addr(console: "Console", address: str) -> str:
    return mask(address) if console.masked else address


def _text(console: "Console", text: str) -> str:
    return mask_text(text) if console.masked else text


# -- overview ---------------------------------------------------------------------------------------
HOURS = (1, 3, 6, 24)  # the overview's windows (?hours=); 3 unless asked
MIN_SPAN = 15  # minutes the plot shows at least, however recent the first message


def _window(req: "Request") -> int:
    asked = req.query.get("hours", "")
    return int(asked) if asked.isdigit() and int(asked) in HOURS else 3


def time_labels(minutes: list[int]) -> dict[int, str]:
    """Local clock times at round minutes, no more than seven along the axis."""
    span = len(minutes)
    step = next((s for s in (5, 10, 15, 30, 60, 120, 180, 360) if span / s <= 7), 720)
    return {i: time.strftime("%H:%M", time.localtime(m * 60)) for i, m in enumerate(minutes) if m % step == 0}


def overview(console: "Console", req: "Request") -> "Response":
    hours = _window(req)
    bs = figures.beanstalk(console.settings)
    sup = ops.supervisor_processes(console.settings)
    error = ""
    try:
        minutes, series, lat, domains, brake, registry = console.with_store(lambda s: (
            *figures.rates(s, hours * 60), figures.latency(s), figures.domains(s, console.settings, hours),
            figures.brake(s, console.settings), figures.registered(s, console.settings)))
    except (ops.StoreUnavailable, ops.StoreCorrupt) as exc:
        error = f"the delivery store is not available: {exc}"
        minutes, series, lat, domains, brake, registry = [], {}, figures.latency_empty(), [], {
            "state": "unknown", "detail": "", "engaged": False}, []
    # leading minutes without any message are left out (a new pool's plot is not a flat line
    # with a spike at its end), down to MIN_SPAN
    first = next((i for i in range(len(minutes)) if any(v[i] for v in series.values())), len(minutes))
    first = max(0, min(first, len(minutes) - MIN_SPAN))
    minutes, series = minutes[first:], {name: values[first:] for name, values in series.items()}
    since = time.strftime("%H:%M", time.localtime(minutes[0] * 60)) if minutes else ""
    labels = time_labels(minutes)
    plot = line_plot([Series(name, values) for name, values in series.items()], x_labels=labels,
                     title=f"messages per minute by outcome since {since}", unit="messages/min", plot_id="rates")
    try:
        waits = console.with_store(lambda s: figures.latency_series(s, minutes))
    except (ops.StoreUnavailable, ops.StoreCorrupt):
        waits = {"p50": [], "p99": []}
    latency_plot = line_plot([Series(name, values) for name, values in waits.items()], x_labels=labels,
                             title=f"enqueue to accepted, p50 and p99 of each minute's sent mail, since {since}",
                             unit="seconds", height=180, plot_id="latency")
    for w in registry:
        w["current_job"] = _text(console, w["current_job"])
    try:
        disabled = set(console.with_store(worker_registry.disabled_targets))
    except (ops.StoreUnavailable, ops.StoreCorrupt, ops.OpsError):
        disabled = set()
    except Exception:  # noqa: BLE001 - a store from before the registry: nothing disabled
        disabled = set()
    hosts = [{"target": t, "disabled": t in disabled} for t in sorted({w["host"] for w in registry} | disabled)]
    return render(console, req, "overview.html", bs=bs, hosts=hosts, pause_choices=PAUSE_CHOICES,
                  relays=_relays(console),
                  processes=sup.get("processes", []),
                  supervisor_error=sup.get("error", ""), plot=_markup(plot), latency_plot=_markup(latency_plot),
                  hours=hours, windows=HOURS,
                  since=since, legend=[(n, sum(v)) for n, v in series.items()], lat=lat, domains=domains,
                  brake=brake, registry=registry, error=error or (f"beanstalkd {bs.error}" if bs.error else ""))


PAUSE_CHOICES = ((300, "5 min"), (3600, "1 h"), (21600, "6 h"), (86400, "1 day"))


def _relays(console: "Console") -> list[dict[str, Any]]:
    """Each configured relay with what the workers last said of it (worker/relays/board.py): up
    or skipped until when and why, bulk pace and rate, the relay's queue, bulk held. No session
    is opened from here (`beanmail status` probes each relay)."""
    if console.settings.transport != "smtp":
        return []
    from ..relays import board
    from ..relays.plan import RelayPlan, relay_name

    plan = RelayPlan.from_settings(console.settings)
    try:
        seen = {r["relay"]: r for r in console.with_store(lambda s: board.read(s, console.settings.lost_after))}
    except (ops.StoreUnavailable, ops.StoreCorrupt):
        seen = {}
    now = time.time()
    return [{"relay": relay_name(t), "priorities": plan.priorities_of(t), "seen": seen.get(relay_name(t)),
             "skipped_for": max(0.0, (seen.get(relay_name(t)) or {}).get("skipped_until", 0.0) - now)}
            for t in plan.relays]


def _markup(svg: str) -> Any:
    from markupsafe import Markup

    return Markup(svg)  # built by plot.py, which escapes every text it writes


# -- buried jobs ------------------------------------------------------------------------------------
def buried(console: "Console", req: "Request") -> "Response":
    from .app import Response

    tube = req.query.get("tube") or None
    filt = BuriedFilter.from_fields(req.query)
    if isinstance(filt, str):
        return Response.text(400, f"no such filter: {filt}\n")
    error, jobs = "", []
    try:
        jobs = ops.buried(console.server, tube=tube, limit=200) if filt.empty else matching(console.server, filt)
    except ops.OpsError as exc:
        error = str(exc)
    for j in jobs:
        j["template"], j["recipient"] = figures.summary(j["body"], console.masked)
        j["subject"] = _text(console, subject_of(figures.envelope_of(j["body"]) or {}))
        j["reason"] = _text(console, j["reason"])
    counts = [(t["tube"], t["buried"]) for t in figures.beanstalk(console.server).tubes if t["buried"]]
    if tube:
        counts = [c for c in counts if c[0] == tube]
    return render(console, req, "buried.html", here="/buried", tube=tube, jobs=jobs, counts=counts, error=error,
                  filt=filt)


# -- one job ----------------------------------------------------------------------------------------
MAX_JOB_ID = 2**63 - 1  # beanstalkd's ids and the store's integers end here


def job(console: "Console", req: "Request", job_id: str) -> "Response":
    from .app import Response

    jid = int(job_id) if len(job_id) <= 20 else MAX_JOB_ID + 1
    if not 0 < jid <= MAX_JOB_ID:
        return Response.text(404, f"no such job: {job_id[:40]}{'…' if len(job_id) > 40 else ''} is not a job id"
                                  f" (1 to {MAX_JOB_ID})\n")
    settings = console.server
    view, error = None, ""
    try:
        view = console.with_store(lambda s: _peek(settings, s, jid))
    except ops.OpsError as exc:
        error = str(exc)
    history = console.with_store(lambda s: s.failures_of(settings.beanstalk_url, jid))
    body = view["body"] if view else (history[-1][3] if history else None)
    deliveries = []
    if body is not None:
        key = (figures.envelope_of(body) or {}).get("id")
        if isinstance(key, str) and key and "\x00" not in key:  # (no store's text holds a NUL)
            deliveries = _deliveries(console, console.with_store(lambda s: s.deliveries(key=key, limit=5)))
    if view and view.get("reason"):
        view["reason"] = _text(console, view["reason"])
    return render(console, req, "job.html", here="/buried", job_id=jid, view=view, error=error,
                  history=[{"tube": t, "outcome": o, "reason": _text(console, r), "at": at}
                           for t, o, r, _, at in history],
                  deliveries=deliveries, body=None if body is None else figures.shown_body(body, console.masked))


def _peek(settings: Any, store: Any, jid: int) -> dict[str, Any] | None:
    with ops._client(settings) as client:
        return ops._job_view(client, store, settings, jid)


# -- the delivery log -------------------------------------------------------------------------------
def _deliveries(console: "Console", rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    titles = console.with_store(lambda s: subjects.subjects_for(s, [r.key for r in rows]))
    for r in rows:
        buried_rows = console.with_store(lambda s: s.failures_mentioning(r.key, limit=10)) if r.key else []
        out.append({
            "key": _text(console, r.key), "recipient": ", ".join(_addr(console, a) for a in r.recipient.split(",")),
            "template": r.template or "(raw message)", "subject": _text(console, titles.get(r.key, "")),
            "outcome": r.outcome, "attempts": r.attempts, "updated_at": r.updated_at,
            "detail": _text(console, "; ".join(x for x in (r.reason, r.reply) if x)),
            "buried": [{"job": j, "tube": t, "outcome": o, "reason": _text(console, why), "at": at}
                       for j, t, o, why, at in buried_rows],
        })
    return out


def log(console: "Console", req: "Request") -> "Response":
    q = req.query.get("q", "").strip()
    searched = ""
    if not q:
        rows = console.with_store(lambda s: s.deliveries(limit=50))
    else:
        rows = console.with_store(lambda s: s.deliveries(key=q, limit=50))
        searched = "by key"
        if not rows:
            rows = console.with_store(lambda s: deliveries_by_prefix(s, q, 50))
            searched = f"by keys starting “{_text(console, q[:100])}”"
        if not rows and "@" in q:
            try:
                address = parse_recipient(q).address.lower()
            except ValueError:
                address = ""
            if address:
                rows = console.with_store(lambda s: s.deliveries(recipient=address, limit=50))
                searched = f"by recipient {_addr(console, address)}"
    return render(console, req, "log.html", q=q, searched=searched, deliveries=_deliveries(console, rows))


def deliveries_by_prefix(store: Any, prefix: str, limit: int) -> list[Any]:
    """The newest deliveries whose key starts with ``prefix`` (exactly: no LIKE, whose % and _
    a key may hold), on both store engines."""
    from ..store import Delivery

    # SQLite compares keys byte by byte, so ``key >= prefix`` lets it start in its index; a
    # PostgreSQL database's collation need not, and there the prefix alone decides
    ranged = "" if store.location.startswith(("postgresql://", "postgres://")) else "key >= ? AND "
    args = ((prefix,) if ranged else ()) + (len(prefix), prefix, limit)
    rows = store.all("SELECT key, recipient, template, outcome, reason, reply, attempts, updated_at FROM deliveries"
                     f" WHERE {ranged}substr(key, 1, ?) = ? ORDER BY updated_at DESC LIMIT ?", args)
    return [Delivery(*r) for r in rows]


# -- deferred mail, events, replies, mailouts -------------------------------------------------------
def deferred(console: "Console", req: "Request") -> "Response":
    error, rows, found = "", [], Scan()
    try:
        rows, found = console.with_store(lambda s: queues.deferred(console.server, s, console.masked))
    except ScanError as exc:
        error = str(exc)
    return render(console, req, "deferred.html", shown=rows, scan=found, error=error)


EVENT_VIEWS = (("pending", "pending"), ("retried", "retried"), ("failed", "failed"))


def events(console: "Console", req: "Request") -> "Response":
    settings = console.server
    view = req.query.get("view", "pending")
    view = view if view in dict(EVENT_VIEWS) else "pending"
    counts = {"pending": 0, "retried": 0, "failed": 0}
    error, rows, found = "", [], Scan()
    tube = settings.events_tube
    for t in figures.beanstalk(console.server).tubes:
        if t["tube"] == tube:
            counts = {"pending": t["ready"], "retried": t["delayed"], "failed": t["buried"]}
    try:
        if view == "failed":
            for v in ops.buried(settings, tube=tube, limit=queues.SHOWN):
                rows.append({"id": v["id"], "outcome": v["outcome"], "reason": _text(console, v["reason"]),
                             **queues.event_summary(v["body"], console.masked)})
        else:
            rows, found = queues.events(settings, "ready" if view == "pending" else "delayed", console.masked)
    except (ops.OpsError, ScanError) as exc:
        error = str(exc)
    return render(console, req, "events.html", view=view, views=EVENT_VIEWS, counts=counts, rows=rows, scan=found,
                  tube=tube, url=settings.events_url.split("?")[0], error=error)


def replies(console: "Console", req: "Request") -> "Response":
    outcome = req.query.get("outcome", "")
    outcome = outcome if outcome in ("replied", "refused") else ""
    rows = console.with_store(lambda s: s.inbound(limit=500 if outcome else 200))
    if outcome:
        rows = [r for r in rows if r["outcome"] == outcome][:200]
    for r in rows:
        r["address"] = _addr(console, r["address"]) if r["address"] else ""
        r["key"], r["reason"] = _text(console, r["key"]), _text(console, r["reason"])
    return render(console, req, "replies.html", rows=rows, outcome=outcome)


MAX_KEY = 500  # characters of a key the mailout page looks up


def mailout(console: "Console", req: "Request") -> "Response":
    from .app import Response

    key = req.query.get("key", "").strip()
    if len(key) > MAX_KEY:
        return Response.text(400, f"not a mailout key: {len(key):,} characters; a key has at most {MAX_KEY}\n")
    error, progress = "", None
    if key:
        try:
            progress = console.with_store(lambda s: mailouts.progress(console.server, s, key))
        except ScanError as exc:
            error = str(exc)
    return render(console, req, "mailout.html", key=key, shown_key=_text(console, key), p=progress, error=error,
                  scheduled=_scheduled(console))


def _scheduled(console: "Console") -> list[Any]:
    """Mailouts held for later (producer/schedule.py), the soonest first."""
    from producer.blobs import BlobError
    from producer.schedule import Schedule

    try:
        schedule = Schedule(console.settings.store)
    except BlobError:
        return []
    try:
        return schedule.list()
    except BlobError:
        return []
    finally:
        schedule.close()


# -- suppressions -----------------------------------------------------------------------------------
def suppressions(console: "Console", req: "Request") -> "Response":
    q = req.query.get("q", "").strip()
    if "<" in q:
        try:
            q = parse_recipient(q).address
        except ValueError:
            pass
    rows = console.with_store(lambda s: s.suppression_search(q, limit=200))
    counts = sorted(console.with_store(lambda s: s.suppression_counts()).items())
    return render(console, req, "suppressions.html", q=q, counts=counts, rows=[
        {"address": _addr(console, a), "source": src, "reason": _text(console, why), "at": at, "until": until,
         "ref": console.sign("suppression:" + a), "hint": mask(a)} for a, src, why, at, until in rows])


# -- bounces (worker.feedback) ----------------------------------------------------------------------
def bounces(console: "Console", req: "Request") -> "Response":
    q = req.query.get("q", "").strip()
    address = None
    if q:
        try:
            address = parse_recipient(q).address.lower()
        except ValueError:
            address = q.lower()
    rows = console.with_store(lambda s: s.bounces(limit=200, address=address))
    for r in rows:
        r["address"] = _addr(console, r["address"]) if r["address"] else ""
        r["key"], r["detail"] = _text(console, r["key"]), _text(console, r["detail"])
    return render(console, req, "bounces.html", q=q, rows=rows)


# -- the rest ---------------------------------------------------------------------------------------
def stylesheet(console: "Console", req: "Request") -> "Response":
    from .app import Response

    return Response(200, CSS, "text/css; charset=utf-8")


def metrics(console: "Console", req: "Request") -> "Response":
    from .app import Response
    from .metrics import exposition

    body, content_type = exposition(console)
    return Response(200, body, content_type)


def healthz(console: "Console", req: "Request") -> "Response":
    from .app import Response
    from .health import check

    problems = check(console)
    return Response.text(503, "".join(f"{p}\n" for p in problems)) if problems else Response.text(200, "ok\n")


def routes() -> dict[tuple[str, str], Callable[..., "Response"]]:
    from .actions import (delete, host_disable, host_enable, kick, mailout_cancel, suppress_add, suppress_remove,
                          tube_pause, tube_resume)

    return {
        ("GET", "/"): overview, ("GET", "/buried"): buried, ("POST", "/buried/kick"): kick,
        ("POST", "/buried/delete"): delete, ("GET", "/job/(\\d+)"): job, ("GET", "/log"): log,
        ("GET", "/suppressions"): suppressions, ("POST", "/suppressions/add"): suppress_add,
        ("POST", "/suppressions/remove"): suppress_remove, ("GET", "/static/console.css"): stylesheet,
        ("GET", "/bounces"): bounces, ("GET", "/metrics"): metrics, ("GET", "/healthz"): healthz,
        ("GET", "/deferred"): deferred, ("GET", "/events"): events, ("GET", "/replies"): replies,
        ("GET", "/mailout"): mailout, ("POST", "/tube/pause"): tube_pause, ("POST", "/tube/resume"): tube_resume,
        ("POST", "/host/disable"): host_disable, ("POST", "/host/enable"): host_enable,
        ("POST", "/mailout/cancel"): mailout_cancel,
    }




def route(routes: dict[tuple[str, str], Callable[..., "Response"]], req: "Request") -> tuple[Any, Any]:
    """(handler, path arguments), or (None, the error response)."""
    from .app import Response

    method = "GET" if req.method == "HEAD" else req.method
    allowed = False
    for (m, pattern), handler in routes.items():
        match = re.fullmatch(pattern, req.path)
        if match:
            if m == method:
                return handler, match.groups()
            allowed = True
    if allowed:
        return None, Response.text(405, "method not allowed\n")
    return None, Response.text(404, "no such page\n")
