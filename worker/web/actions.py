"""The console's actions: each a POST whose CSRF token the app checked, answered by a redirect
to the page it came from with what was done."""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import greenstalk

from producer.client import connect, parse_recipient

from .. import ops
from .. import registry
from .filters import BuriedFilter, apply
from .pages import MAX_JOB_ID, PAUSE_CHOICES, _addr

if TYPE_CHECKING:
    from .app import Console, Request, Response


# beanstalkd's tube names (its protocol: up to 200 bytes of these, not starting with '-')
_TUBE = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()\-]{0,199}")


def _bad_form(f: dict[str, str]) -> str:
    """Why the form's job or tube cannot be one ("" when they can, or are not given)."""
    job, tube = f.get("job", ""), f.get("tube", "")
    if job and not (job.isascii() and job.isdigit() and 0 < int(job) <= MAX_JOB_ID):
        return f"not a job id: {job[:40]!r} (1 to {MAX_JOB_ID})"
    if tube and not _TUBE.fullmatch(tube):
        return f"not a tube name: {tube[:40]!r}"
    return ""


def _by_filter(console: "Console", req: "Request", action: str) -> "Response":
    """Kick or delete the buried jobs a filter picks; the page it came from says how many it
    touched, of how many matched (and of how many the operator saw when they confirmed)."""
    from .app import Response

    f = BuriedFilter.from_fields(req.form)
    if isinstance(f, str):
        return Response.text(400, f"nothing {action}ed: {f}\n")
    if f.empty:
        return Response.text(400, f"nothing {action}ed: say which jobs: template, domain or reason\n")
    back = "/buried?" + urlencode([(k, v) for k, v in (("tube", f.tube), ("template", f.template),
                                                       ("domain", f.domain), ("reason", f.reason)) if v])
    done = "kicked" if action == "kick" else "deleted"
    try:
        touched, matched = apply(console.server, f, action)
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, back, done=f"not {done}: {exc or type(exc).__name__}")
    seen = req.form.get("expected", "")
    shown = int(seen) if seen.isdigit() and len(seen) < 10 else matched
    said = f"; {seen} were shown when you confirmed" if shown != matched else ""
    return Response.redirect(req, back, done=f"{done} {touched} buried job(s) of {matched} matching"
                                             f" {f.describe()}{said}")


def kick(console: "Console", req: "Request") -> "Response":
    from .app import Response

    f = req.form
    if f.get("filter") == "1":
        return _by_filter(console, req, "kick")
    if bad := _bad_form(f):
        return Response.text(400, f"nothing kicked: {bad}\n")
    try:
        if f.get("job"):
            ops.kick(console.server, job=int(f["job"]))
            return Response.redirect(req, "/buried", done=f"kicked job {f['job']}")
        if f.get("all") == "1":
            kicked = ops.kick(console.server, tube=f.get("tube") or None, every=True)
            said = ", ".join(f"{t}: {n}" for t, n in kicked.items()) or "nothing was buried"
            return Response.redirect(req, "/buried", done=f"kicked {said}")
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/buried", done=f"not kicked: {exc or type(exc).__name__}")
    return Response.text(400, "say which: job=ID, or all=1 (with tube=T for one tube)\n")


def delete(console: "Console", req: "Request") -> "Response":
    """One buried job, or every buried job of one tube (as the CLI: one tube at a time)."""
    from .app import Response

    f = req.form
    if f.get("filter") == "1":
        return _by_filter(console, req, "delete")
    if bad := _bad_form(f):
        return Response.text(400, f"nothing deleted: {bad}\n")
    try:
        if f.get("job"):
            job = int(f["job"])
            if _state(console, job) != "buried":  # kicked or taken meanwhile: not what was shown
                return Response.redirect(req, "/buried", done=f"job {job} is no longer buried; nothing deleted")
            ops.delete(console.server, job=job)
            return Response.redirect(req, "/buried", done=f"deleted job {job}")
        if f.get("all") == "1" and f.get("tube"):
            deleted = ops.delete(console.server, tube=f["tube"])
            return Response.redirect(req, "/buried", done=f"deleted {deleted.get(f['tube'], 0)} buried job(s)"
                                                           f" of {f['tube']}")
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/buried", done=f"not deleted: {exc or type(exc).__name__}")
    return Response.text(400, "say which: job=ID, or all=1 with tube=T\n")


def _state(console: "Console", job: int) -> str | None:
    try:
        with connect(console.server.beanstalk_url, timeout=5, encoding=None) as c:
            return str(c.stats_job(job)["state"])
    except greenstalk.NotFoundError:
        return None
    except OSError as exc:
        raise ops.OpsError(f"beanstalkd is unreachable: {exc}") from None


def suppress_add(console: "Console", req: "Request") -> "Response":
    from .app import Response

    try:
        address = parse_recipient(req.form.get("address", "")).address
    except ValueError as exc:
        return Response.redirect(req, "/suppressions", done=f"not added: {exc}")
    reason = req.form.get("reason", "").strip() or "added by operator"
    console.with_store(lambda s: s.suppress(address, reason, "operator"))
    return Response.redirect(req, "/suppressions", done=f"suppressed {_addr(console, address.lower())}")


def suppress_remove(console: "Console", req: "Request") -> "Response":
    """The form names the address by an opaque reference (the page shows it masked)."""
    from .app import Response

    ref, hint = req.form.get("ref", ""), req.form.get("hint", "")
    local, _, domain = hint.rpartition("@")
    # the masked address narrows the search (z***@example.com: z...@example.com); the
    # reference, this server's HMAC of the address, picks the one entry
    pattern = f"{local[:1]}%@{domain}" if local and domain else "%"
    candidates = console.with_store(lambda s: s.all("SELECT address FROM suppression WHERE address LIKE ?",
                                                    (pattern,)))
    address = next((a for (a,) in candidates if hmac.compare_digest(console.sign("suppression:" + a), ref)), None)
    if address is None:
        return Response.redirect(req, "/suppressions", done="not removed: no such entry (removed meanwhile?)")
    console.with_store(lambda s: s.unsuppress(address))
    return Response.redirect(req, "/suppressions", done=f"removed {_addr(console, address)}")


# -- tubes and hosts --------------------------------------------------------------------------------
def _tube(req: "Request") -> str | None:
    tube = req.form.get("tube", "")
    return tube if _TUBE.fullmatch(tube) else None


def tube_pause(console: "Console", req: "Request") -> "Response":
    """beanstalkd's pause-tube: no job of the tube is handed out until the pause ends (or resume)."""
    from .app import Response

    tube, seconds = _tube(req), req.form.get("seconds", "")
    allowed = dict(PAUSE_CHOICES)
    if tube is None:
        return Response.text(400, f"nothing paused: not a tube name: {req.form.get('tube', '')[:40]!r}\n")
    if not (seconds.isdigit() and len(seconds) < 10 and int(seconds) in allowed):
        return Response.text(400, f"nothing paused: seconds must be one of {', '.join(map(str, allowed))}\n")
    try:
        servers = _pause_everywhere(console, tube, int(seconds))
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/", done=f"not paused: {exc or type(exc).__name__}")
    return Response.redirect(req, "/", done=f"paused tube {tube} for {allowed[int(seconds)]}: 1 tube{servers}")


def tube_resume(console: "Console", req: "Request") -> "Response":
    from .app import Response

    tube = _tube(req)
    if tube is None:
        return Response.text(400, f"nothing resumed: not a tube name: {req.form.get('tube', '')[:40]!r}\n")
    try:
        servers = _pause_everywhere(console, tube, 0)
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/", done=f"not resumed: {exc or type(exc).__name__}")
    return Response.redirect(req, "/", done=f"resumed tube {tube}: 1 tube{servers}")


def _pause_everywhere(console: "Console", tube: str, seconds: int) -> str:
    """The tube paused (0: resumed) on every server of the fleet, as `beanmail pause` does;
    with more than one, " on N servers" for the message."""
    urls = console.settings.beanstalk_urls
    for url in urls:
        ops.pause(console.settings.replace(beanstalk_url=url), tube, seconds)
    return f" on {len(urls)} servers" if len(urls) > 1 else ""


MAX_TARGET = 300  # a host name (253) and a pid, or a worker id


def _target(req: "Request") -> str | None:
    target = req.form.get("target", "").strip()
    ok = 0 < len(target) <= MAX_TARGET and target.isprintable() and not any(c.isspace() for c in target)
    return target if ok else None


def host_disable(console: "Console", req: "Request") -> "Response":
    """As `beanmail workers disable TARGET`: its workers finish the job in hand and exit."""
    from .app import Response

    target = _target(req)
    if target is None:
        return Response.text(400, "nothing disabled: target must be a host name, host:pid or a worker id\n")
    console.with_store(lambda s: registry.disable(s, target))
    running = sum(1 for w in console.with_store(lambda s: registry.workers(s, console.settings.lost_after))
                  if w.state == "running" and target in (w.host, f"{w.host}:{w.pid}", w.id))
    return Response.redirect(req, "/", done=f"disabled {target}: {running} running worker(s) will finish the job"
                                            " in hand and exit")


def host_enable(console: "Console", req: "Request") -> "Response":
    """As `beanmail workers enable TARGET`, and supervisord asked to start this host's stopped workers."""
    from .app import Response

    target = _target(req)
    if target is None:
        return Response.text(400, "nothing enabled: target must be a host name, host:pid or a worker id\n")
    lifted = console.with_store(lambda s: registry.enable(s, target))
    if not lifted:
        return Response.redirect(req, "/", done=f"{target} was not disabled; nothing changed")
    started = ops.start_stopped_workers(console.settings)
    return Response.redirect(req, "/", done=f"enabled {target}" + (f"; started {len(started)} worker"
                                                                    f" process(es) here" if started else ""))


def mailout_cancel(console: "Console", req: "Request") -> "Response":
    """As `beanmail mailout cancel KEY`: what is still held of a scheduled mailout never goes."""
    from producer.blobs import BlobError
    from producer.schedule import Schedule, ScheduleError

    from .app import Response

    key = req.form.get("key", "")  # as listed, not trimmed: a key is what the producer was given
    if not key.strip():
        return Response.text(400, "nothing cancelled: no mailout key given\n")
    try:
        schedule = Schedule(console.settings.store)
        try:
            mailout, kept_from = schedule.cancel(key)
        finally:
            schedule.close()
    except ScheduleError as exc:
        return Response.redirect(req, "/mailout", done=f"not cancelled: {exc}")
    except BlobError as exc:
        return Response.redirect(req, "/mailout", done=f"not cancelled: the store is not available: {exc}")
    return Response.redirect(req, "/mailout", done=f"cancelled {mailout.key}: {kept_from} of {mailout.recipients}"
                                                  " recipient(s) will not get it")
