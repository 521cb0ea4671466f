"""The ``beanmail`` command. Subcommands stay thin: they parse, call one module, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from . import settings as settings_mod
from .loop import EX_CONFIG, EX_UNAVAILABLE
from .store import StoreCorrupt, StoreUnavailable

EX_USAGE = 2  # what argparse uses for a command line it refuses
EX_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `seq 1000000 | head -1` reports, so pipefail sees a cut-off


def _json_arg(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beanmail", description="Asynchronous notification mail over beanstalkd.")
    p.add_argument("--config", help="beanmail.toml (default: $BEANMAIL_CONFIG or ./beanmail.toml)")
    p.add_argument("--server", help="with several beanstalkd servers: act on this one only (a job id"
                                    " belongs to one server)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="reserve and deliver mail jobs")
    w.add_argument("--tubes", help="comma-separated tubes to watch (default: mail.urgent,mail.normal,mail.bulk)")
    w.add_argument("--burst", action="store_true", help="exit 0 once no job is ready in the watched tubes")
    w.add_argument("--concurrency", "--threads", dest="concurrency", type=int, metavar="N",
                   help="deliveries in flight in this process (default: $BEANMAIL_CONCURRENCY or 1;"
                        " --threads is its older name)")

    f = sub.add_parser("fanout", help="expand mailout chunks into one mail.bulk job per recipient; release"
                                      " scheduled mailouts when due")
    f.add_argument("--burst", action="store_true", help="exit 0 once no chunk is ready")

    e = sub.add_parser("enqueue", help="queue one templated message")
    e.add_argument("template")
    e.add_argument("--to", required=True, help='recipient, e.g. "Zoë <zoe@example.com>"')
    e.add_argument("--context", type=_json_arg, default={}, help="JSON object for the template")
    e.add_argument("--priority", choices=("urgent", "normal", "bulk"), default="normal")
    e.add_argument("--key", help="idempotency key (default: a new one)")
    e.add_argument("--delay", type=int, default=0)

    r = sub.add_parser("render", help="print a message as it would be sent, without sending it")
    r.add_argument("template")
    r.add_argument("--context", type=_json_arg, default=None,
                   help="JSON object (default: the template's preview.json sample, if it has one)")
    r.add_argument("--to", default="Preview <preview@example.com>")
    r.add_argument("--part", choices=("message", "text", "html", "subject"), default="message")

    sp = sub.add_parser("spool", help="move jobs a producer spooled during an outage to beanstalkd")
    sp.add_argument("action", choices=("flush",))
    sp.add_argument("--spool", help="the spool file (default: $BEANMAIL_SPOOL)")

    st = sub.add_parser("status", help="tubes, workers and supervisor processes")
    st.add_argument("--json", action="store_true")

    b = sub.add_parser("buried", help="buried jobs with their recorded reasons")
    b.add_argument("--tube", help="one tube (default: all mail tubes and mailout)")
    b.add_argument("--limit", type=int, default=50)
    b.add_argument("--json", action="store_true")

    k = sub.add_parser("kick", help="move buried jobs back to ready: N (the first N of each tube), --all, or --job ID")
    k.add_argument("count", nargs="?", type=int, help="kick at most this many buried jobs in each tube")
    k.add_argument("--all", action="store_true", help="every buried job (of every tube, or of --tube)")
    k.add_argument("--tube", help="tube to kick in (default: every tube with buried jobs)")
    k.add_argument("--job", type=int, help="kick this one job id")
    k.add_argument("--json", action="store_true")

    d = sub.add_parser("delete", help="delete a job (--job ID) or every buried job of a tube (--tube T --buried)")
    d.add_argument("--job", type=int, help="delete this one job (buried, ready or delayed)")
    d.add_argument("--tube", help="with --buried: the tube whose buried jobs go")
    d.add_argument("--buried", action="store_true", help="every buried job of --tube")
    d.add_argument("--json", action="store_true")

    pa = sub.add_parser("pause", help="pause a tube: no job is reserved from it for SECONDS")
    pa.add_argument("tube")
    pa.add_argument("seconds", type=int)

    pk = sub.add_parser("peek", help="show one job: its state, body and recorded reason")
    pk.add_argument("id", type=int)
    pk.add_argument("--json", action="store_true")

    su = sub.add_parser("suppress", help="the suppression list")
    su.add_argument("action", choices=("add", "remove", "list"))
    su.add_argument("address", nargs="?")
    su.add_argument("--reason", default="added by operator")
    su.add_argument("--json", action="store_true")

    se = sub.add_parser("settings", help="every setting with its variable, TOML key and the value in force")
    se.add_argument("--json", action="store_true")

    wk = sub.add_parser("workers", help="the fleet's worker processes; disable or enable a host")
    wk.add_argument("action", nargs="?", choices=("list", "disable", "enable"), default="list")
    wk.add_argument("host", nargs="?", help="disable/enable: the host name (every worker on it)")
    wk.add_argument("--pid", type=int, help="disable/enable one process of HOST only")
    wk.add_argument("--json", action="store_true")

    lg = sub.add_parser("log", help="what happened to a message")
    lg.add_argument("--key")
    lg.add_argument("--to")
    lg.add_argument("--limit", type=int, default=20)
    lg.add_argument("--json", action="store_true")

    wb = sub.add_parser("web", help="the operator console in the browser, /metrics and /healthz")
    wb.add_argument("--listen", help="HOST:PORT (default: $BEANMAIL_WEB_LISTEN or 127.0.0.1:8025)")
    from .feedback import commands as feedback_commands

    feedback_commands.register(sub)  # dkim keygen, bounce, bounces [fetch], resume
    from .digest.commands import add_parser as add_digest_parser

    add_digest_parser(sub)  # beanmail digest run | flush [--all] | prefs ... | status
    from .doctor import register as add_doctor_parser

    add_doctor_parser(sub)  # beanmail doctor
    from .outbox import register as register_outbox

    register_outbox(sub)  # beanmail outbox run | init | status | retry --db URL
    from .events import commands as events_commands

    events_commands.register(sub)  # beanmail events run [--burst], inbound
    from .mailout_commands import register as register_mailout

    register_mailout(sub)  # beanmail mailout list | cancel KEY | progress KEY
    return p


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 1 failed (one line says why), 2 a command line refused, 69 beanstalkd
    (worker --burst) or the store unreachable, 78 bad settings or a corrupt store, 141 stdout was
    closed before everything was written (`beanmail buried | head`): ends quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe must be caught below
        return code
    except BrokenPipeError:
        # whatever is still buffered would fail again when Python flushes at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_BROKEN_PIPE


def _error(message: str) -> None:
    """One line on stderr, without a password or secret (a bad URL setting repeats the URL)."""
    from . import redact

    print(redact.text(message), file=sys.stderr)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_mod.load(path=args.config)
        if args.server:
            settings = settings.replace(beanstalk_url=args.server)
        if getattr(args, "spool", None):
            settings = settings.replace(spool=args.spool)
        if getattr(args, "concurrency", None):  # the command line wins over either variable
            settings = settings_mod.validate(settings.replace(concurrency=args.concurrency, threads=1))
        if getattr(args, "listen", None):
            settings = settings.replace(web_listen=args.listen)
        if getattr(args, "tubes", None):
            settings = settings.replace(tubes=tuple(t.strip() for t in args.tubes.split(",") if t.strip()))
    except settings_mod.SettingsError as exc:
        _error(f"beanmail: bad setting: {exc}")
        return EX_CONFIG
    from . import commands

    handler = getattr(args, "handler", None) or getattr(commands, f"cmd_{args.command}")
    try:
        return int(handler(settings, args) or 0)
    except settings_mod.SettingsError as exc:
        _error(f"beanmail: bad setting: {exc}")
        return EX_CONFIG
    except commands.UsageError as exc:
        _error(f"beanmail {args.command}: {exc}")
        return EX_USAGE
    except commands.CommandError as exc:
        _error(f"beanmail {args.command}: {exc}")
        return 1
    except StoreUnavailable as exc:
        reason = _one_line(exc.reason).removeprefix("store unavailable: ")
        _error(f"beanmail: store unavailable: {reason}")
        return EX_UNAVAILABLE
    except StoreCorrupt as exc:
        message = _one_line(str(exc))
        if settings.store not in message:
            message += f" (BEANMAIL_STORE={settings.store})"
        _error(f"beanmail: store corrupt: {message}")
        return EX_CONFIG


if __name__ == "__main__":
    sys.exit(main())
