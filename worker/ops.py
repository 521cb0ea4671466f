"""Operator views and actions over beanstalkd and supervisord (XML-RPC on its unix socket)."""

from __future__ import annotations

import sqlite3
import time
import xmlrpc.client
from typing import Any

import greenstalk

from producer.client import connect
from producer.envelope import MAIL_TUBES, MAILOUT_TUBE

from .settings import Settings
from .store import Store, StoreCorrupt, StoreUnavailable

TUBES = (*MAIL_TUBES, MAILOUT_TUBE)
JOB_STATES = ("ready", "reserved", "delayed", "buried")


class OpsError(Exception):
    """A failure an operator should read in one line (exit status 1)."""


def open_store(settings: Settings) -> Store:
    """The store, or StoreUnavailable / StoreCorrupt, the two failures the CLI turns into one line
    and an exit status. Store's constructor is meant to raise only those two; the clauses below
    translate what it may still let through, so that no command ends in a traceback."""
    try:
        return Store(settings.store)
    except (StoreUnavailable, StoreCorrupt):
        raise
    except sqlite3.OperationalError as exc:  # locked, read-only, cannot open
        raise StoreUnavailable(f"store unavailable: {settings.store}: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        raise StoreCorrupt(f"{settings.store} is not a beanmail store: {exc}") from exc
    except OSError as exc:  # its folder cannot be created
        raise StoreUnavailable(f"store unavailable: {settings.store}: {exc}") from exc


def _client(settings: Settings) -> greenstalk.Client:
    try:
        return connect(settings.beanstalk_url, timeout=5, encoding=None)
    except OSError as exc:
        raise OpsError(f"beanstalkd at {settings.beanstalk_url} is unreachable: {exc}") from None


def supervisor_processes(settings: Settings) -> dict[str, Any]:
    from supervisor.xmlrpc import SupervisorTransport

    url = settings.supervisor_url
    transport = SupervisorTransport(None, None, serverurl=url)
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        infos = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return {"error": f"not reachable at {url}: {exc}"}
    finally:
        transport.close()
    return {"processes": [
        {"name": f"{i['group']}:{i['name']}", "state": i["statename"], "pid": i["pid"],
         "description": i["description"]} for i in infos
    ]}


def start_stopped_workers(settings: Settings) -> list[str]:
    """After `workers enable`: start this host's worker processes that exited when they were
    disabled (supervisord does not restart an expected exit). [] if supervisord is not here."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl=settings.supervisor_url)
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    started = []
    try:
        for info in proxy.supervisor.getAllProcessInfo():
            if info["statename"] in ("EXITED", "STOPPED", "FATAL", "BACKOFF") and info["name"].startswith(("mail", "urgent")):
                name = f"{info['group']}:{info['name']}"
                proxy.supervisor.startProcess(name, False)
                started.append(name)
    except (OSError, xmlrpc.client.Error):
        return started
    finally:
        transport.close()
    return started


def status(settings: Settings) -> dict[str, Any]:
    """Every beanstalkd server's state (``servers``), with ``beanstalkd`` and ``tubes`` the
    whole fleet's: the first unreachable server's error, and each tube's counts summed."""
    out: dict[str, Any] = {"beanstalkd": {}, "servers": [], "tubes": [],
                           "supervisor": supervisor_processes(settings)}
    totals: dict[str, dict[str, Any]] = {}
    for url in settings.beanstalk_urls:
        server = server_status(url)
        out["servers"].append(server)
        if "error" in server and "error" not in out["beanstalkd"]:
            out["beanstalkd"] = {"error": f"{url}: {server['error']}" if len(settings.beanstalk_urls) > 1
                                 else server["error"]}
        for t in server.get("tubes", []):
            total = totals.setdefault(t["tube"], {"tube": t["tube"]})
            for k, v in t.items():
                if k != "tube":
                    total[k] = total.get(k, 0) + v
    if not out["beanstalkd"] and out["servers"]:
        out["beanstalkd"] = out["servers"][0]["stats"]
    names = list(totals)
    out["tubes"] = [totals[t] for t in [t for t in TUBES if t in names] + sorted(set(names) - set(TUBES))]
    return out


def server_status(url: str) -> dict[str, Any]:
    try:
        client = connect(url, timeout=5, encoding=None)
    except OSError as exc:
        return {"url": url, "error": f"unreachable: {exc}"}
    with client:
        stats = client.stats()
        view: dict[str, Any] = {"url": url, "tubes": [], "stats": {
            k: stats[k] for k in ("version", "uptime", "current-connections", "current-workers",
                                  "current-jobs-reserved", "binlog-current-index") if k in stats}}
        for tube in sorted(client.tubes()):
            s = client.stats_tube(tube)
            if tube == "default" and not any(s[f"current-jobs-{state}"] for state in JOB_STATES):
                continue  # every connection's tube until it says `use`: shown only when a job landed there
            view["tubes"].append({
                "tube": tube, "ready": s["current-jobs-ready"], "urgent": s["current-jobs-urgent"],
                "reserved": s["current-jobs-reserved"], "delayed": s["current-jobs-delayed"],
                "buried": s["current-jobs-buried"],
                # this connection watches `default` too (every connection does): not a worker
                "watching": s["current-watching"] - (tube == "default"),
                "paused": s["pause-time-left"], "total": s["total-jobs"],
            })
    return view


def _job_view(client: greenstalk.Client, store: Store, settings: Settings, job_id: int) -> dict[str, Any] | None:
    try:
        stats = client.stats_job(job_id)
        job = client.peek(job_id)
    except greenstalk.NotFoundError:
        return None
    failure = store.failure(settings.beanstalk_url, job_id)
    body = job.body.decode("utf-8", "replace") if isinstance(job.body, bytes) else job.body
    view: dict[str, Any] = {k: stats[k] for k in ("id", "tube", "state", "pri", "age", "delay", "ttr",
                                                  "reserves", "releases", "buries", "kicks", "timeouts")}
    view.update(outcome=failure[0] if failure else "", reason=failure[1] if failure else "",
                buried_at=failure[2] if failure else None, body=body)
    return view


def buried(settings: Settings, tube: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """beanstalkd can only show the first buried job of a tube, so the store's record of what was
    buried provides the list, and peek-buried catches anything buried by another program."""
    store = open_store(settings)
    try:
        return _buried(settings, store, tube, limit)
    finally:
        store.close()


def _buried(settings: Settings, store: Store, tube: str | None, limit: int) -> list[dict[str, Any]]:
    jobs: dict[int, dict[str, Any]] = {}
    with _client(settings) as client:
        for job_id in store.failed_job_ids(settings.beanstalk_url, limit=max(limit * 4, 200)):
            view = _job_view(client, store, settings, job_id)
            if view and view["state"] == "buried" and (tube is None or view["tube"] == tube):
                jobs[job_id] = view
        present = set(client.tubes())
        for t in [tube] if tube else [t for t in TUBES if t in present]:
            if t not in present:
                continue
            client.use(t)
            try:
                first = client.peek_buried()
            except greenstalk.NotFoundError:
                continue
            if first.id not in jobs:
                view = _job_view(client, store, settings, first.id)
                if view:
                    jobs[first.id] = view
    return sorted(jobs.values(), key=lambda j: j["id"])[:limit]


def _buried_count(client: greenstalk.Client, tube: str) -> int:
    try:
        return int(client.stats_tube(tube)["current-jobs-buried"])
    except greenstalk.NotFoundError:  # no such tube: nothing in it
        return 0


def _tubes_with_buried(client: greenstalk.Client, tube: str | None) -> dict[str, int]:
    names = [tube] if tube else client.tubes()
    return {t: n for t in names if (n := _buried_count(client, t))}


def kick(settings: Settings, tube: str | None = None, count: int | None = None, job: int | None = None,
         every: bool = False) -> dict[str, int]:
    """Kick one job, the first ``count`` buried jobs of each tube, or (``every``) all of them.
    Returns how many per tube; only tubes where something moved appear.

    beanstalkd's kick moves *delayed* jobs when a tube has no buried one: retries waiting out
    their backoff would be sent early. So a tube is only kicked while it has buried jobs, and
    never by more than it has."""
    with _client(settings) as client:
        if job is not None:
            try:
                stats = client.stats_job(job)
                client.kick_job(job)
            except greenstalk.NotFoundError:
                raise OpsError(f"job {job} is not buried or delayed (or does not exist)") from None
            return {str(stats["tube"]): 1}
        kicked: dict[str, int] = {}
        for t, buried_now in _tubes_with_buried(client, tube).items():
            client.use(t)
            wanted = buried_now if every else min(count or 0, buried_now)
            moved = 0
            while moved < wanted and (n := min(wanted - moved, _buried_count(client, t))):
                moved += client.kick(n)  # re-counted each round: another operator may kick too
            if moved:
                kicked[t] = moved
        return kicked


def delete(settings: Settings, tube: str | None = None, job: int | None = None) -> dict[str, int]:
    """Delete one job (any state but reserved) or every buried job of ``tube``; how many per tube.
    The store keeps its record of why they were buried."""
    with _client(settings) as client:
        if job is not None:
            try:
                stats = client.stats_job(job)
            except greenstalk.NotFoundError:
                raise OpsError(f"no job {job} on {settings.beanstalk_url}") from None
            if stats["state"] == "reserved":
                raise OpsError(f"job {job} is reserved by a worker; delete it once it is buried or ready")
            try:
                client.delete(job)
            except greenstalk.NotFoundError:  # reserved or deleted meanwhile
                raise OpsError(f"job {job} could not be deleted: a worker reserved it or it ended meanwhile") from None
            return {str(stats["tube"]): 1}
        assert tube is not None
        deleted = 0
        if tube in client.tubes():
            client.use(tube)
            while True:
                try:
                    first = client.peek_buried()
                    client.delete(first)
                except greenstalk.NotFoundError:  # none left (or kicked by someone else meanwhile)
                    break
                deleted += 1
        return {tube: deleted} if deleted else {}


def pause(settings: Settings, tube: str, seconds: int) -> None:
    with _client(settings) as client:
        try:
            client.pause_tube(tube, seconds)
        except greenstalk.NotFoundError:
            raise OpsError(f"no tube {tube!r} on {settings.beanstalk_url}") from None


def peek(settings: Settings, job_id: int) -> dict[str, Any]:
    store = open_store(settings)
    try:
        with _client(settings) as client:
            view = _job_view(client, store, settings, job_id)
        if view is not None:
            return view
        failure = store.failure(settings.beanstalk_url, job_id)
    finally:
        store.close()
    hint = (f"no job {job_id} on {settings.beanstalk_url}: it may have finished (a sent, skipped or bounced"
            " job leaves beanstalkd) or been deleted; see what happened with `beanmail log --key KEY`"
            " (the message's idempotency key)")
    if failure:
        outcome, reason, at = failure
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        hint += f"; the store recorded it buried as {outcome} at {when}: {reason}"
    raise OpsError(hint)
