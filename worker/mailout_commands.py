"""``beanmail mailout list | cancel KEY | progress KEY``: scheduled mailouts and any recorded
mailout's progress, for operators (the console calls the same functions)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from producer.blobs import BlobError
from producer.schedule import Mailout, Schedule, ScheduleError

from .mailout_progress import mailout_progress
from .ops import OpsError, open_store
from .settings import Settings


def register(sub: Any) -> None:
    m = sub.add_parser("mailout", help="scheduled mailouts: list, cancel; any mailout's progress")
    ms = m.add_subparsers(dest="mailout_command", required=True, metavar="ACTION")
    ls = ms.add_parser("list", help="mailouts waiting for their time (--all: released and cancelled ones too)")
    ls.add_argument("--all", action="store_true", dest="everything")
    ls.add_argument("--json", action="store_true")
    cancel = ms.add_parser("cancel", help="cancel a scheduled mailout: what is not yet due is never sent")
    cancel.add_argument("key")
    cancel.add_argument("--json", action="store_true")
    pr = ms.add_parser("progress", help="sent / bounced / skipped / failed / left of a mailout, by key")
    pr.add_argument("key")
    pr.add_argument("--json", action="store_true")
    m.set_defaults(handler=cmd_mailout)


def cmd_mailout(settings: Settings, args: argparse.Namespace) -> int:
    from .output import print_json

    if args.mailout_command == "progress":
        open_store(settings).close()  # the delivery log exists, and a store that is down says so
        try:
            p = mailout_progress(settings.store, args.key)
        except BlobError as exc:
            raise OpsError(str(exc)) from None
        if args.json:
            print_json(p.to_json())
        else:
            total = "?" if p.total is None else str(p.total)
            print(f"{p.key}: {p.state or 'not recorded'}; {total} recipient(s): sent {p.sent}, bounced {p.bounced},"
                  f" skipped {p.skipped}, failed {p.failed}, left {p.left}"
                  + (f" ({p.held} held until due)" if p.held else ""))
        return 0
    schedule = open_schedule(settings)
    try:
        if args.mailout_command == "cancel":
            try:
                mailout, unsent = schedule.cancel(args.key)
            except ScheduleError as exc:
                raise OpsError(str(exc)) from None
            if args.json:
                print_json({**mailout.to_json(), "not_sent": unsent})
            else:
                print(f"cancelled {mailout.key}: {unsent} of {mailout.recipients} recipient(s) will not get it"
                      + (f"; {mailout.chunks} chunk(s) being released this instant still go" if mailout.chunks else ""))
            return 0
        states = ("writing", "scheduled", "released", "queued", "cancelled") if args.everything else ("writing", "scheduled")
        rows = schedule.list(states)
        if args.json:
            print_json([m.to_json() for m in rows])
        elif not rows:
            print("no mailout is scheduled")
        for m in [] if args.json else rows:
            print(describe(m))
        return 0
    finally:
        schedule.close()


def open_schedule(settings: Settings) -> Schedule:
    try:
        return Schedule(settings.store)
    except BlobError as exc:
        raise OpsError(str(exc)) from None


def describe(m: Mailout) -> str:
    when = _local(m.send_at) if m.send_at else "-"
    if m.local and m.last_at > m.send_at:
        when = f"{m.local} local: {when} .. {_local(m.last_at)}"
    return f"{m.key}  {m.state}  {when}  template={m.template}  recipients={m.recipients}  held_chunks={m.chunks}"


def _local(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
    except (OverflowError, ValueError, OSError):  # a stored time no clock can show: shown as it is
        return str(t)
