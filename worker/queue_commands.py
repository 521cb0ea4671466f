"""The operator's commands on beanstalkd's queues: ``status`` (with health, the brake, the relays
and supervisord), ``buried``, ``kick``, ``delete``, ``pause`` and ``peek``, across every server of
the fleet (``each_server``)."""

from __future__ import annotations

import argparse
import time

from . import ops
from .ops import open_store
from .output import UsageError, print_json
from .settings import Settings
from .store import StoreCorrupt, StoreUnavailable


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit status 1 when mail cannot go out (`worker.health`: beanstalkd or the store down, the
    relay or DNS not answering, ready jobs no worker watches, urgent mail waiting too long), each
    reason said, so a monitor can run it as a check."""
    from . import health, redact
    from .feedback.commands import brake_line, brake_status

    status = ops.status(settings)
    status["brake"] = brake_status(settings)  # why bulk mail holds, if it does
    if settings.transport == "smtp":
        from .relays.status import relay_status

        status["relays"] = relay_status(settings)  # each relay: answers, skipped until, bulk pace, queue
    found = [f"beanstalkd {s['url']}: {s['error']}" for s in status["servers"] if "error" in s]
    try:
        open_store(settings).close()
    except (StoreUnavailable, StoreCorrupt) as exc:
        found.append(f"store: {exc}")
    found = [redact.text(p) for p in found + health.problems(settings, status["servers"])]
    status["healthy"], status["problems"] = not found, found
    down = int(bool(found))
    if args.json:
        print_json(status)
        return down
    for server in status["servers"]:
        print(redact.text(f"beanstalkd {server['url']}: {server.get('error') or 'up'}"))
    if len(status["servers"]) > 1 and status["tubes"]:
        print("  all servers:")
    if status["tubes"]:
        print(f"  {'tube':<14}{'ready':>8}{'urgent':>8}{'reserved':>10}{'delayed':>9}{'buried':>8}{'paused':>8}{'workers':>9}")
        for t in status["tubes"]:
            print(f"  {t['tube']:<14}{t['ready']:>8}{t['urgent']:>8}{t['reserved']:>10}{t['delayed']:>9}"
                  f"{t['buried']:>8}{t['paused']:>8}{t['watching']:>9}")
    print(brake_line(status["brake"]))
    if "relays" in status:
        from .relays.status import relay_lines

        print(redact.text("\n".join(relay_lines(status["relays"]))))
    sup = status["supervisor"]
    if "error" in sup:
        print(redact.text(f"supervisord: {sup['error']}"))
    else:
        print("supervisord:")
        for p in sup["processes"]:
            print(f"  {p['name']:<28}{p['state']:<10}{p['description']}")
    print("healthy: mail can go out" if not found else "UNHEALTHY:\n" + "\n".join(f"  {p}" for p in found))
    return down


def each_server(settings: Settings) -> list[Settings]:
    """The settings narrowed to each beanstalkd server of the fleet, for the commands that act
    on every server (buried, kick, delete --tube, pause)."""
    return [settings.replace(beanstalk_url=url) for url in settings.beanstalk_urls]


def one_server(settings: Settings) -> Settings:
    """Job ids are per server: with several, the operator names one (--server URL)."""
    if len(settings.beanstalk_urls) > 1:
        raise UsageError(f"several beanstalkd servers ({settings.beanstalk_url}): a job id belongs to one;"
                         " name it with --server URL")
    return settings


def _merge(counts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for tube, n in c.items():
            merged[tube] = merged.get(tube, 0) + n
    return merged


def cmd_buried(settings: Settings, args: argparse.Namespace) -> int:
    several = len(settings.beanstalk_urls) > 1
    jobs = [{**j, "server": s.beanstalk_url} if several else j
            for s in each_server(settings) for j in ops.buried(s, tube=args.tube, limit=args.limit)]
    if args.json:
        print_json(jobs)
        return 0
    if not jobs:
        print("no buried jobs")
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["buried_at"])) if j["buried_at"] else "?"
        print(f"{j['id']:>8}  {j['tube']:<12} {j['outcome'] or '?':<10} {when}  {j['reason'] or '(no reason recorded)'}")
    return 0


def cmd_kick(settings: Settings, args: argparse.Namespace) -> int:
    """A bare ``kick`` is refused: beanstalkd's default of one job is rarely what was meant, and
    "all" is not a default worth guessing for jobs that were buried for a reason."""
    chosen = [x for x in (args.count is not None, args.all, args.job is not None) if x]
    if len(chosen) != 1:
        what = "say which" if not chosen else "choose one of"
        raise UsageError(f"{what}: `kick N` (the first N buried jobs of each tube), `kick --all`, `kick --job ID`")
    if args.count is not None and args.count < 1:
        raise UsageError("N must be 1 or more")
    if args.job is not None:
        kicked = ops.kick(one_server(settings), job=args.job)
    else:
        kicked = _merge([ops.kick(s, tube=args.tube, count=args.count, every=args.all) for s in each_server(settings)])
    if args.json:
        print_json(kicked)
    elif not kicked:
        print(f"no buried jobs in {args.tube}" if args.tube else "nothing to kick: no tube has buried jobs")
    else:
        for tube, n in kicked.items():
            print(f"{tube}: kicked {n}" + (f" (job {args.job})" if args.job is not None else ""))
    return 0


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    if args.job is not None and (args.tube or args.buried):
        raise UsageError("either `delete --job ID` or `delete --tube T --buried`, not both")
    if args.job is None and not (args.tube and args.buried):
        raise UsageError("say which: `delete --job ID`, or `delete --tube T --buried` (every buried job of T)")
    if args.job is not None:
        deleted = ops.delete(one_server(settings), job=args.job)
    else:
        deleted = _merge([ops.delete(s, tube=args.tube) for s in each_server(settings)])
    if args.json:
        print_json(deleted)
    elif args.job is not None:
        print(f"{next(iter(deleted))}: deleted job {args.job}")
    elif not deleted:
        print(f"no buried jobs in {args.tube}")
    else:
        print(f"{args.tube}: deleted {deleted[args.tube]} buried job(s)")
    return 0


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    for s in each_server(settings):
        ops.pause(s, args.tube, args.seconds)
    print(f"{args.tube}: paused for {args.seconds}s")
    return 0


def cmd_peek(settings: Settings, args: argparse.Namespace) -> int:
    job = ops.peek(one_server(settings), args.id)
    if args.json:
        print_json(job)
        return 0
    for name in ("id", "tube", "state", "pri", "age", "delay", "reserves", "releases", "buries", "kicks",
                 "outcome", "reason"):
        if job.get(name) not in (None, ""):
            print(f"{name:>9}: {job[name]}")
    print(f"     body: {job['body']}")
    return 0
