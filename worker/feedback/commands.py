"""The feedback subcommands: ``dkim keygen``, ``bounce``, ``bounces [fetch]``, ``resume``.
Registered by cli.py; each parses, calls one module, prints."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..output import print_counts, print_json
from ..settings import Settings
from ..store import StoreCorrupt, StoreUnavailable

EX_TEMPFAIL = 75  # sysexits: an MTA's pipe keeps the message and tries again
MAX_REPORT = 10 * 1024 * 1024


def register(sub: Any) -> None:
    dk = sub.add_parser("dkim", help="DKIM keys: `dkim keygen --selector S --domain D`")
    dk_sub = dk.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    kg = dk_sub.add_parser("keygen", help="write a new private key and print its DNS TXT record")
    kg.add_argument("--selector", required=True)
    kg.add_argument("--domain", required=True)
    kg.add_argument("--key", help="where to write the key (default: var/dkim/SELECTOR.DOMAIN.pem)")
    kg.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    kg.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    kg.set_defaults(handler=cmd_dkim)

    b = sub.add_parser("bounce", help="handle one bounce or complaint report on standard input (an MTA's pipe)")
    b.add_argument("--recipient", default="", help="the envelope recipient, e.g. Postfix pipe's ${original_recipient}")
    b.set_defaults(handler=cmd_bounce)

    bs = sub.add_parser("bounces", help="bounces and complaints received, newest first;"
                                         " `bounces fetch` reads the mailbox")
    bs.add_argument("action", nargs="?", choices=("list", "fetch", "show"), default="list")
    bs.add_argument("id", nargs="?", help="with show: the bounce whose raw message to print")
    bs.add_argument("--address", help="only this address")
    bs.add_argument("--limit", type=int, default=50)
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(handler=cmd_bounces)

    r = sub.add_parser("resume", help="lift the brake on bulk mail")
    r.set_defaults(handler=cmd_resume)


def cmd_dkim(settings: Settings, args: argparse.Namespace) -> int:
    from ..dkim import keygen, zone_line
    from ..ops import OpsError

    path = args.key or f"var/dkim/{args.selector}.{args.domain}.pem"
    try:
        record = keygen(path, algorithm=args.algorithm, bits=args.bits)
    except FileExistsError:
        raise OpsError(f"{path} exists: a key in use is never overwritten; choose a new selector or --key") from None
    except (OSError, ValueError) as exc:
        raise OpsError(f"cannot write {path}: {exc}") from None
    print(f"# private key written to {path} (mode 0600); publish this record, then set")
    print(f"# BEANMAIL_DKIM_KEY={path} BEANMAIL_DKIM_SELECTOR={args.selector} BEANMAIL_DKIM_DOMAIN={args.domain}")
    print(f"# or, beside a key in use (RSA and Ed25519, or a rotation), both lists in the same order:"
          f" BEANMAIL_DKIM_KEY=OLD.pem,{path} BEANMAIL_DKIM_SELECTOR=OLD,{args.selector}")
    print(zone_line(args.selector, args.domain, record))
    return 0


def cmd_bounce(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the report was handled or ignored (kept either way), 75 when the store is
    down (the MTA keeps the message and retries), 78 for bad settings or a damaged store."""
    from .. import logs
    from ..ops import open_store
    from .intake import Intake

    logs.configure(settings.log_format)
    raw = sys.stdin.buffer.read(MAX_REPORT + 1)
    if len(raw) > MAX_REPORT:
        raw = raw[:MAX_REPORT]  # a bounce that big carries an attachment back: the head is enough
    try:
        store = open_store(settings)
        try:
            handled = Intake(settings, store).handle_message(raw, source="pipe", recipient=args.recipient)
        finally:
            store.close()
    except StoreUnavailable as exc:
        print(f"beanmail bounce: store unavailable, try again later: {exc.reason}", file=sys.stderr)
        return EX_TEMPFAIL
    except StoreCorrupt:
        raise
    for h in handled:
        if h.classification == "ignored":
            print(f"ignored: {h.detail}")
            continue
        print(f"{h.classification} {h.address} {h.key}".rstrip() + (" suppressed" if h.suppressed else ""))
    return 0


def cmd_bounces(settings: Settings, args: argparse.Namespace) -> int:
    from ..ops import OpsError, open_store

    if args.action == "fetch":
        from .imap import fetch

        print_counts(fetch(settings), args.json)
        return 0
    store = open_store(settings)
    if args.action == "show":
        raw = store.bounce_raw(args.id or "")
        if raw is None:
            raise OpsError(f"no bounce {args.id!r}")
        sys.stdout.write(raw)
        return 0
    rows = store.bounces(limit=args.limit, address=args.address)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no bounces recorded")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["received_at"]))
        print(f"{when}  {r['classification']:<9} {r['status'] or '-':<7} {r['address'] or '-'}  {r['key'] or '-'}"
              f"  [{r['source']}/{r['kind']}] {r['detail']}  id={r['id']}")
    return 0


def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    from ..ops import open_store
    from .brake import Brake

    store = open_store(settings)
    engaged, reason, _ = store.brake()
    Brake(settings, store).resume()
    print(f"brake released (it was on: {reason}); bulk mail and fan-out go on" if engaged
          else "the brake was not on; bulk tubes unpaused")
    return 0


def brake_status(settings: Settings) -> dict[str, Any]:
    """For `beanmail status`: whether bulk mail holds and why, with the window's rates."""
    from ..ops import open_store
    from .brake import Brake

    try:
        store = open_store(settings)
    except (StoreUnavailable, StoreCorrupt) as exc:
        return {"error": str(getattr(exc, "reason", exc))}
    try:
        return Brake(settings, store).rates()
    except StoreUnavailable as exc:
        return {"error": exc.reason}
    finally:
        store.close()


def brake_line(brake: dict[str, Any]) -> str:
    if "error" in brake:
        return f"brake: unknown ({brake['error']})"
    rates = (f"{brake['sent']} bulk sent, {brake['bounced']} bounced ({brake['bounce_rate']:.1%}),"
             f" {brake['complained']} complaints ({brake['complaint_rate']:.2%}) in the window of {brake['window']}")
    if brake["engaged"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(brake["since"]))
        return f"brake: ON since {when}: {brake['reason']}; mail.bulk and mailout held; `beanmail resume` lifts it"
    if brake.get("unjudged"):
        return f"brake: not judged: {brake['unjudged']}"
    return f"brake: off ({rates})"
