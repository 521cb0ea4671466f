"""The console's actions: each a POST whose CSRF token the app checked, answered by a redirect
to the page it came from with what was done."""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING

import greenstalk

from producer.client import connect, parse_recipient

from .. import ops
from .pages import MAX_JOB_ID, _addr

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


def kick(console: "Console", req: "Request") -> "Response":
    from .app import Response

    f = req.form
    if bad := _bad_form(f):
        return Response.text(400, f"nothing kicked: {bad}\n")
    try:
        if f.get("job"):
            ops.kick(console.settings, job=int(f["job"]))
            return Response.redirect(req, "/buried", done=f"kicked job {f['job']}")
        if f.get("all") == "1":
            kicked = ops.kick(console.settings, tube=f.get("tube") or None, every=True)
            said = ", ".join(f"{t}: {n}" for t, n in kicked.items()) or "nothing was buried"
            return Response.redirect(req, "/buried", done=f"kicked {said}")
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/buried", done=f"not kicked: {exc or type(exc).__name__}")
    return Response.text(400, "say which: job=ID, or all=1 (with tube=T for one tube)\n")


def delete(console: "Console", req: "Request") -> "Response":
    """One buried job, or every buried job of one tube (as the CLI: one tube at a time)."""
    from .app import Response

    f = req.form
    if bad := _bad_form(f):
        return Response.text(400, f"nothing deleted: {bad}\n")
    try:
        if f.get("job"):
            job = int(f["job"])
            if _state(console, job) != "buried":  # kicked or taken meanwhile: not what was shown
                return Response.redirect(req, "/buried", done=f"job {job} is no longer buried; nothing deleted")
            ops.delete(console.settings, job=job)
            return Response.redirect(req, "/buried", done=f"deleted job {job}")
        if f.get("all") == "1" and f.get("tube"):
            deleted = ops.delete(console.settings, tube=f["tube"])
            return Response.redirect(req, "/buried", done=f"deleted {deleted.get(f['tube'], 0)} buried job(s)"
                                                           f" of {f['tube']}")
    except (ops.OpsError, greenstalk.Error) as exc:
        return Response.redirect(req, "/buried", done=f"not deleted: {exc or type(exc).__name__}")
    return Response.text(400, "say which: job=ID, or all=1 with tube=T\n")


def _state(console: "Console", job: int) -> str | None:
    try:
        with connect(console.settings.beanstalk_url, timeout=5, encoding=None) as c:
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
