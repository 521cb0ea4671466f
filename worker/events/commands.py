"""The events subcommands: ``events run [--burst]`` (deliver queued events) and ``inbound``
(one reply on standard input; ``inbound fetch``: a mailbox's). Registered by cli.py; each parses, calls one module, prints."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..settings import Settings


def register(sub: Any) -> None:
    ev = sub.add_parser("events", help="delivery events for the application: `events run` POSTs them (docs/events.md)")
    ev_sub = ev.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    r = ev_sub.add_parser("run", help="deliver queued events to BEANMAIL_EVENTS_URL as signed webhooks")
    r.add_argument("--burst", action="store_true", help="exit 0 once no event is ready")
    r.set_defaults(handler=cmd_events)

    i = sub.add_parser("inbound", help="read one reply on standard input (an MTA's pipe for reply+*@BEANMAIL_REPLY_DOMAIN)"
                                        " and pass it on as a message.replied event; `inbound fetch`: the replies in"
                                        " BEANMAIL_REPLY_MAILBOX over IMAP; `inbound --list`: what came")
    i.add_argument("action", nargs="?", choices=("fetch",), help="fetch: read BEANMAIL_REPLY_MAILBOX instead of stdin")
    i.add_argument("--recipient", default="", help="the envelope recipient, e.g. Postfix pipe's ${original_recipient}")
    i.add_argument("--list", action="store_true", help="list the messages read, newest first, with what became of them")
    i.add_argument("--limit", type=int, default=50)
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=cmd_inbound)


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    from ..logs import configure
    from .deliver import run

    configure(settings.log_format)
    return run(settings, burst=args.burst)


EX_TEMPFAIL = 75  # sysexits: the MTA keeps the message and tries again
MAX_MESSAGE = 10 * 1024 * 1024


def cmd_inbound(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the message was passed on or refused (both recorded: an MTA must not bounce an
    auto-reply back), 75 when the store is unavailable (the MTA tries again)."""
    from ..output import print_counts, print_json
    from ..logs import configure
    from ..store import Store, StoreUnavailable
    from .inbound import handle

    configure(settings.log_format)
    try:
        store = Store(settings.store)
    except StoreUnavailable as exc:
        print(f"beanmail inbound: store unavailable: {exc.reason}", file=sys.stderr)
        return EX_TEMPFAIL
    if args.action == "fetch":
        from .fetch import fetch

        store.close()
        print_counts(fetch(settings), args.json)
        return 0
    try:
        if args.list:
            rows = store.inbound(limit=args.limit)
            if args.json:
                print_json(rows)
            for r in [] if args.json else rows:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["received_at"]))
                print(f"{when}  {r['outcome']:<8} {r['address'] or '?':<30} {r['key'] or '-':<24} {r['reason']}")
            return 0
        raw = sys.stdin.buffer.read(MAX_MESSAGE + 1)
        if len(raw) > MAX_MESSAGE:
            store.record_inbound(outcome="refused", reason=f"larger than {MAX_MESSAGE} bytes", raw=raw[:65536].decode("utf-8", "replace"))
            print(f"beanmail inbound: refused: larger than {MAX_MESSAGE} bytes", file=sys.stderr)
            return 0
        result = handle(settings, store, raw, recipient=args.recipient)
        print(f"{result.outcome}" + (f": {result.reason}" if result.reason else "") + (f" ({result.event_id})" if result.event_id else ""))
        return 0
    except StoreUnavailable as exc:
        print(f"beanmail inbound: store unavailable: {exc.reason}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        store.close()
