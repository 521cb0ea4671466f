"""``beanmail digest run | flush [--all] | prefs ... | status``."""

from __future__ import annotations

import argparse
import time
from typing import Any

import greenstalk

from producer.beanstalk import connect
from producer.client import EnqueueError, parse_recipient
from producer.prefs import Preferences, check_mode, check_timezone, parse_quiet

from .. import logs
from ..ops import OpsError, open_store
from ..output import print_json
from ..settings import Settings
from .close import Closer
from .records import DigestRecords

HELD_TUBES = ("mail.normal", "mail.bulk")  # quiet hours hold only these


def add_parser(sub: Any) -> None:
    dg = sub.add_parser("digest", help="digests and quiet hours: run the closer, flush, preferences")
    ds = dg.add_subparsers(dest="digest_command", required=True, metavar="ACTION")
    ds.add_parser("run", help="close due periods every BEANMAIL_DIGEST_INTERVAL seconds (supervisord's program)")
    fl = ds.add_parser("flush", help="queue the digests that are due now")
    fl.add_argument("--all", action="store_true", dest="everything",
                    help="every waiting item now, due or not, and release mail held for quiet hours")
    fl.add_argument("--json", action="store_true")
    pr = ds.add_parser("prefs", help="a recipient's mode, time zone and quiet hours")
    pr.add_argument("action", choices=("get", "set", "clear", "list"))
    pr.add_argument("address", nargs="?")
    pr.add_argument("--mode", help="default | immediate | hourly | daily | weekly | off")
    pr.add_argument("--timezone", help="an IANA name, e.g. Europe/Berlin (default: BEANMAIL_DIGEST_TIMEZONE)")
    pr.add_argument("--quiet", help="quiet hours, e.g. 22:00-07:00, or none")
    pr.add_argument("--json", action="store_true")
    st = ds.add_parser("status", help="items waiting, recipients, the next period's end")
    st.add_argument("--json", action="store_true")


def cmd_digest(settings: Settings, args: argparse.Namespace) -> int:
    return {"run": _run, "flush": _flush, "prefs": _prefs, "status": _status}[args.digest_command](settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ..commands import wait_for_store

    logs.configure(settings.log_format)
    return Closer(settings, wait_for_store(settings)).run()


def _flush(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    closer = Closer(settings, store)
    try:
        if args.everything:  # mail made before now is no longer held, and digests made now go too
            closer.records.lift_quiet_hours(time.time() + 1)
        done = closer.close(everything=args.everything, stale=0)
    except EnqueueError as exc:
        raise OpsError(f"digests closed but not all queued (a later run queues them): {exc}") from None
    finally:
        closer.notifier.close()
    released = release_held(settings) if args.everything else 0
    if args.json:
        print_json({"digests": done.digests, "items": done.items, "resumed": done.resumed, "released": released})
    else:
        print(f"queued {done.digests} digest(s) of {done.items} item(s)"
              + (f", {done.resumed} left by a stopped closer" if done.resumed else "")
              + (f"; released {released} held job(s)" if args.everything else ""))
    return 0


def release_held(settings: Settings) -> int:
    """Delayed jobs of the tubes quiet hours hold, made ready now (kick-job, one by one from the
    soonest: beanstalkd lists no delayed job but the next). Mail waiting out a retry's backoff
    in those tubes is retried now too."""
    kicked = 0
    for url in settings.beanstalk_urls:
        try:
            client = connect(url, timeout=5, encoding=None)
        except OSError as exc:
            raise OpsError(f"beanstalkd at {url} is unreachable: {exc}") from None
        try:
            for tube in HELD_TUBES:
                try:
                    delayed = int(client.stats_tube(tube)["current-jobs-delayed"])
                except greenstalk.NotFoundError:
                    continue
                client.use(tube)
                for _ in range(delayed):  # bounded: a job held again is not chased around
                    try:
                        job = client.peek_delayed()
                        client.kick_job(job)
                        kicked += 1
                    except greenstalk.NotFoundError:
                        break
        finally:
            client.close()
    return kicked


def _prefs(settings: Settings, args: argparse.Namespace) -> int:
    records = DigestRecords(open_store(settings))
    if args.action == "list":
        rows = [p.to_json() for p in records.all_preferences()]
        if args.json:
            print_json(rows)
        for p in [] if args.json else rows:
            print(f"{p['address']}  mode={p['mode']}  timezone={p['timezone']}  quiet={p['quiet']}")
        if not rows and not args.json:
            print("no preferences set")
        return 0
    if not args.address:
        from ..output import UsageError

        raise UsageError(f"prefs {args.action} needs an ADDRESS")
    try:
        address = parse_recipient(args.address).address.lower()
        if args.action == "set":
            old = records.preferences(address) or Preferences(address)
            start, end = (old.quiet_start, old.quiet_end) if args.quiet is None else parse_quiet(args.quiet)
            records.set_preferences(Preferences(
                address, check_mode(args.mode) if args.mode is not None else old.mode,
                check_timezone(args.timezone) if args.timezone is not None else old.timezone, start, end))
    except ValueError as exc:
        from ..output import UsageError

        raise UsageError(str(exc)) from None
    if args.action == "clear":
        if not records.clear_preferences(address):
            raise OpsError(f"{address} has no preferences")
        print(f"cleared {address}")
        return 0
    p = records.preferences(address)
    if p is None:
        raise OpsError(f"{address} has no preferences (mode: as each job says; time zone:"
                       f" {settings.digest_timezone}; quiet hours: {settings.quiet_hours or 'none'})")
    if args.json:
        print_json(p.to_json())
    else:
        j = p.to_json()
        print(f"{j['address']}  mode={j['mode']}  timezone={j['timezone']}  quiet={j['quiet']}")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    waiting = DigestRecords(open_store(settings)).waiting()
    if args.json:
        print_json(waiting)
        return 0
    due = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(waiting["next_due"])) if waiting["next_due"] else "-"
    print(f"{waiting['items']} item(s) waiting for {waiting['recipients']} recipient(s); next period ends {due}"
          + (f"; {waiting['closing']} digest(s) closed but not yet queued" if waiting["closing"] else ""))
    return 0
