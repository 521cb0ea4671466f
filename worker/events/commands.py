"""The events subcommands: ``events run [--burst]`` (deliver queued events) and ``inbound``
(one reply on standard input). Registered by cli.py; each parses, calls one module, prints."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Settings


def register(sub: Any) -> None:
    ev = sub.add_parser("events", help="delivery events for the application: `events run` POSTs them (docs/events.md)")
    ev_sub = ev.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    r = ev_sub.add_parser("run", help="deliver queued events to BEANMAIL_EVENTS_URL as signed webhooks")
    r.add_argument("--burst", action="store_true", help="exit 0 once no event is ready")
    r.set_defaults(handler=cmd_events)


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    from ..logs import configure
    from .deliver import run

    configure(settings.log_format)
    return run(settings, burst=args.burst)
