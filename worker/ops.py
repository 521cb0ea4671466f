"""Operator views and actions over beanstalkd and supervisord (XML-RPC on its unix socket)."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import greenstalk

from producer.client import connect
from producer.envelope import MAIL_TUBES, MAILOUT_TUBE

from .settings import Settings
from .store import Store

TUBES = (*MAIL_TUBES, MAILOUT_TUBE)


class OpsError(Exception):
    """A failure an operator should read in one line (exit status 1)."""


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


def status(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"beanstalkd": {}, "tubes": [], "supervisor": supervisor_processes(settings)}
    try:
        client = connect(settings.beanstalk_url, timeout=5, encoding=None)
    except OSError as exc:
        out["beanstalkd"] = {"error": f"unreachable: {exc}"}
        return out
    with client:
        stats = client.stats()
        out["beanstalkd"] = {k: stats[k] for k in ("version", "uptime", "current-connections",
                                                   "current-workers", "current-jobs-reserved",
                                                   "binlog-current-index") if k in stats}
        present = set(client.tubes())
        for tube in [t for t in TUBES if t in present] + sorted(present - set(TUBES) - {"default"}):
            s = client.stats_tube(tube)
            out["tubes"].append({
                "tube": tube, "ready": s["current-jobs-ready"], "urgent": s["current-jobs-urgent"],
                "reserved": s["current-jobs-reserved"], "delayed": s["current-jobs-delayed"],
                "buried": s["current-jobs-buried"], "watching": s["current-watching"],
                "paused": s["pause-time-left"], "total": s["total-jobs"],
            })
    return out


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
    store = Store(settings.store)
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


def kick(settings: Settings, tube: str | None = None, count: int = 1, job: int | None = None) -> dict[str, int]:
    with _client(settings) as client:
        if job is not None:
            try:
                stats = client.stats_job(job)
                client.kick_job(job)
            except greenstalk.NotFoundError:
                raise OpsError(f"job {job} is not buried or delayed (or does not exist)") from None
            return {str(stats["tube"]): 1}
        kicked: dict[str, int] = {}
        tubes = [tube] if tube else [t for t in client.tubes() if client.stats_tube(t)["current-jobs-buried"]]
        for t in tubes:
            client.use(t)
            kicked[t] = client.kick(count)
        return kicked


def pause(settings: Settings, tube: str, seconds: int) -> None:
    with _client(settings) as client:
        try:
            client.pause_tube(tube, seconds)
        except greenstalk.NotFoundError:
            raise OpsError(f"no tube {tube!r} on {settings.beanstalk_url}") from None


def peek(settings: Settings, job_id: int) -> dict[str, Any]:
    with _client(settings) as client:
        view = _job_view(client, Store(settings.store), settings, job_id)
    if view is None:
        raise OpsError(f"no job {job_id} on {settings.beanstalk_url}")
    return view
