"""What each ``beanmail`` subcommand does, given the settings and its parsed arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

from producer import EnqueueError, Notifier, spool
from producer.client import parse_recipient

from producer.envelope import MAILOUT_TUBE

from . import logs, ops
from .loop import Pool, Worker
from .ops import open_store
from .output import CommandError, UsageError, print_counts, print_json  # noqa: F401 - their home for other commands
from .queue_commands import (cmd_buried, cmd_delete, cmd_kick, cmd_pause, cmd_peek, cmd_status,  # noqa: F401
                             each_server, one_server)
from .settings import Settings, SettingsError
from .store import Store, StoreUnavailable


def flush_spool(settings: Settings) -> int:
    """Move spooled jobs to beanstalkd; returns how many (0 without a spool)."""
    if not settings.spool:
        return 0
    # the settings say everything: a Notifier built here reads no BEANMAIL_* variable itself
    notifier = Notifier(settings.beanstalk_url, secret=settings.secret, spool="", blobs=settings.store)
    try:
        return spool.flush(settings.spool, notifier.put_body)
    except EnqueueError as exc:
        raise CommandError(f"spool kept for later: {exc}") from None
    except OSError as exc:  # the spool's folder is full or unwritable: the spool waits too
        raise CommandError(f"spool kept for later: {settings.spool}: {exc}") from None
    finally:
        notifier.close()


def cmd_spool(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.spool:
        raise CommandError("no spool configured (BEANMAIL_SPOOL or --spool)")
    print(f"flushed {flush_spool(settings)} job(s) from {settings.spool}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from .flight import flies, sending_stage, shared_sessions
    from .delivery import make_transport

    if MAILOUT_TUBE in settings.tubes:
        raise SettingsError(f"the worker cannot send {MAILOUT_TUBE} chunks (it would bury every one as poison):"
                            f" run `beanmail fanout` for the {MAILOUT_TUBE} tube; it puts one mail.bulk job per"
                            " recipient for the workers")
    # a job's text the terminal's encoding cannot show (a lone surrogate) is escaped, never a crash
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    logs.configure(settings.log_format)
    if "mail.bulk" in settings.tubes and not (settings.unsubscribe_url or settings.unsubscribe_mailto):
        logs.get_logger().warning(
            "bulk mail will go out without List-Unsubscribe, which Gmail and Yahoo require of bulk senders:"
            " set BEANMAIL_UNSUBSCRIBE_URL or BEANMAIL_UNSUBSCRIBE_MAILTO", tubes=",".join(settings.tubes))
    try:
        if flushed := flush_spool(settings):
            logs.get_logger().info("spool flushed", jobs=flushed, spool=settings.spool)
    except CommandError as exc:  # beanstalkd down: the loop below waits for it; the spool waits too
        logs.get_logger().warning("spool not flushed", reason=str(exc))
    # BEANMAIL_CONCURRENCY sessions in flight on an event loop per beanstalkd server of the fleet
    # (direct MX: one loop and pool for them all), or at 1 one blocking loop per server
    per_server = 1 if flies(settings) else settings.in_flight
    servers = [url for url in settings.beanstalk_urls for _ in range(per_server)]
    stores = [open_store(settings) if args.burst else wait_for_store(settings) for _ in servers]
    for s in stores:
        s.in_doubt_delay, s.lost_after = settings.in_doubt_delay, settings.lost_after
    start_journals(stores)
    try:
        if recovered := stores[0].recover_journals():
            logs.get_logger().warning("recorded what killed workers sent (or left in doubt) and never recorded",
                                      keys=recovered)
    except StoreUnavailable:
        pass  # claimed keys wait; the next start, or a worker meeting their claims, reads the journals
    # one direct-MX transport (or pool) per process, so its per-domain connection cap holds for the
    # whole process; a relay session is one connection and stays with its loop
    shared = make_transport(settings) if settings.transport == "mx" and not flies(settings) else None
    sessions = shared_sessions(settings)
    loops = [Worker(settings, sending_stage(settings, s, transport=shared, shared=sessions), s, url=url)
             for url, s in zip(servers, stores)]
    worker: Worker | Pool = loops[0] if len(loops) == 1 else Pool(loops)
    worker.install_signal_handlers()
    registry = _register(settings, loops, burst=args.burst)
    if registry is None:
        if sessions is not None:
            sessions.close(settings.smtp_timeout)
        return 0
    try:
        return worker.run(burst=args.burst)
    finally:
        if sessions is not None:
            sessions.close(settings.smtp_timeout)
        registry.close()
        for s in stores:  # an empty journal goes with a clean exit; one still holding keys stays
            s.journal.close()


def _register(settings: Settings, loops: list[Worker], *, burst: bool) -> "Registry | None":
    """The registry entry and heartbeat of this process; None when it was stopped while its host
    was disabled (a started worker on a disabled host waits to be enabled, holding nothing)."""
    from .registry import Registry

    def stop() -> None:
        for w in loops:
            w.stopping = True

    def progress() -> tuple[int, str]:
        return sum(w.processed for w in loops), ",".join(str(w.current) for w in loops if w.current)

    store = open_store(settings) if burst else wait_for_store(settings)
    registry = Registry(store, settings.tubes, heartbeat=settings.heartbeat, lost_after=settings.lost_after,
                        progress=progress, stop=stop)
    delay, logged = 0.5, False
    while True:  # a store that opens but cannot be written yet (a full disk): waited for, not exited on
        try:
            registry.start()
            disabled = registry.is_disabled()
            break
        except StoreUnavailable as exc:
            if burst:
                raise
            if not logged:
                logs.get_logger().error("cannot register in the store; retrying until it can be written",
                                        error=exc.reason)
                logged = True
            loops[0]._sleep(delay)
            if loops[0].stopping:
                return None
            delay = min(delay * 2, 30.0)
    if disabled and not burst:
        logs.get_logger().warning("this host is disabled: waiting for `beanmail workers enable`",
                                  worker=registry.id)
        while registry.is_disabled() and not loops[0].stopping:
            loops[0]._sleep(settings.heartbeat)
        if loops[0].stopping:
            registry.disabled = True
            registry.close()
            return None
    return registry


def start_journals(stores: list[Store]) -> None:
    """Each loop's journal opened and locked before any job is taken (worker/journal.py): a
    folder that cannot be written stops the worker (exit 78, naming it); a full disk is waited
    out like any store outage."""
    from .journal import JournalUnwritable

    delay, logged = 0.5, False
    while True:
        try:
            for store in stores:
                store.journal.start()
            return
        except JournalUnwritable as exc:
            logs.get_logger().error("journal folder cannot be written: the worker does not run without it",
                                    journal=str(exc.path), error=str(exc))
            raise SettingsError(f"{exc} (a worker killed mid-batch would send its batch again without it)") from None
        except OSError as exc:
            if not logged:
                logs.get_logger().error("journal cannot be written yet; waiting", error=str(exc))
                logged = True
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def wait_for_store(settings: Settings) -> Store:
    """A long-running worker waits for its store as it waits for beanstalkd (supervisord would
    give up on a program that exits at once, again and again); a damaged store still stops it."""
    delay, logged = 0.5, False
    while True:
        try:
            return open_store(settings)
        except StoreUnavailable as exc:
            if not logged:
                logs.get_logger().error("store unavailable at start; waiting for it", error=exc.reason)
                logged = True
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def cmd_digest(settings: Settings, args: argparse.Namespace) -> int:
    from .digest.commands import cmd_digest as digest

    return digest(settings, args)


def cmd_fanout(settings: Settings, args: argparse.Namespace) -> int:
    from .fanout import Fanout

    logs.configure(settings.log_format)
    from producer.blobs import BlobError

    from .scheduled import Releaser

    loops = [Worker(settings, Fanout(settings), open_store(settings), tubes=(MAILOUT_TUBE,), url=url)
             for url in settings.beanstalk_urls]
    worker: Worker | Pool = loops[0] if len(loops) == 1 else Pool(loops)
    worker.install_signal_handlers()
    if args.burst:  # what is due now, then the chunks it put
        releaser = Releaser(settings)
        try:
            releaser.release()
        except (BlobError, EnqueueError) as exc:  # held in the store: a later run releases them
            logs.get_logger().warning("scheduled mailouts not released", error=logs.mask_text(str(exc)))
        finally:
            releaser.stop()
        return worker.run(burst=True)
    releaser = Releaser(settings).start()  # scheduled mailouts, released as they fall due
    try:
        return worker.run()
    finally:
        releaser.stop()


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from producer.addresses import AddressError

    from .outcomes import Poison
    from .validate import check_recipient

    notifier = Notifier(settings.beanstalk_url, secret=settings.secret, spool=settings.spool, blobs=settings.store)
    try:
        recipient = parse_recipient(args.to)
        check_recipient(recipient)  # the worker would bury it: say so now
    except AddressError as exc:  # the worker's own judgement (producer.addresses), its words
        raise CommandError(f"invalid recipient address {args.to!r}: {exc.reason}") from None
    except (ValueError, Poison) as exc:
        raise CommandError(getattr(exc, "reason", str(exc))) from None
    try:
        job_id = notifier.notify(args.template, recipient, args.context, priority=args.priority,
                                 key=args.key, delay=args.delay)
    except (EnqueueError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(job_id if job_id else f"spooled to {settings.spool} (beanstalkd unreachable)")
    return 0


def preview_context(templates: str, name: str) -> dict[str, Any]:
    """A template's sample context, ``<name>/preview.json``, for a preview without --context."""
    path = os.path.join(templates, name, "preview.json")
    try:
        with open(path, encoding="utf-8") as f:
            sample = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    if not isinstance(sample, dict):
        raise CommandError(f"{path}: must hold a JSON object")
    return sample


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from . import mime
    from .outcomes import Outcome
    from .render import Renderer

    try:
        recipient = parse_recipient(args.to)
    except ValueError as exc:
        raise CommandError(f"--to: {exc}") from None
    context = preview_context(settings.templates, args.template) if args.context is None else dict(args.context)
    context.setdefault("recipient", {"address": recipient.address, "name": recipient.name})  # as a worker does
    try:
        rendered = Renderer(settings.templates).render(args.template, context)
    except Outcome as exc:
        raise CommandError(exc.reason) from None
    if args.part == "subject":
        print(rendered.subject)
    elif args.part == "text":
        sys.stdout.write(rendered.text)
    elif args.part == "html":
        if rendered.html is None:
            raise CommandError(f"template {args.template!r} has no body.html")
        sys.stdout.write(rendered.html)
    else:
        message = mime.build(rendered, mime.sender_address(settings.from_addr), recipient)
        sys.stdout.write(message.decode("ascii", "replace"))
    return 0


def cmd_suppress(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    if args.action == "list":
        rows = store.suppression_list()
        if args.json:
            print_json([dict(zip(("address", "source", "reason", "created_at", "expires_at"), r)) for r in rows])
            return 0
        if not rows:
            print("the suppression list is empty")
        for address, source, reason, _, until in rows:
            lapses = time.strftime("until %Y-%m-%d %H:%M", time.localtime(until)) if until else "permanent"
            print(f"{address}  {source}  {lapses}  {reason}")
        return 0
    if not args.address:
        raise UsageError(f"suppress {args.action} needs an ADDRESS")
    try:
        address = parse_recipient(args.address).address
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.action == "add":
        store.suppress(address, args.reason, "operator")
        print(f"suppressed {address.lower()}")
    elif not store.unsuppress(address):
        raise CommandError(f"{address.lower()} is not on the suppression list")
    else:
        print(f"removed {address.lower()}")
    return 0


def cmd_log(settings: Settings, args: argparse.Namespace) -> int:
    if not args.key and not args.to:
        raise CommandError("give --key K or --to ADDRESS")
    recipient = None
    if args.to:
        try:  # any form the producer accepts: "Zoë <ZOE@example.com>", a bare address; the log keeps it lowercased
            recipient = parse_recipient(args.to).address.lower()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    rows = open_store(settings).deliveries(key=args.key, recipient=recipient, limit=args.limit)
    if args.json:
        print_json([r.__dict__ for r in rows])
        return 0
    if not rows:
        print("nothing recorded")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated_at))
        detail = "; ".join(x for x in (r.reason, r.reply) if x)
        print(f"{when}  {r.outcome:<9} {r.key}  {r.recipient}  {r.template}  attempts={r.attempts}  {detail}")
    return 0


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    """Refuses (78) to listen beyond loopback without BEANMAIL_WEB_PASSWORD."""
    from .web.server import check_listen, serve

    check_listen(settings)
    logs.configure(settings.log_format)
    return serve(settings)


def cmd_workers(settings: Settings, args: argparse.Namespace) -> int:
    from . import registry

    store = open_store(settings)
    if args.action == "list":
        rows = registry.workers(store, settings.lost_after)
        if args.json:
            print_json([r.to_json() for r in rows])
            return 0
        if not rows:
            print("no worker has registered")
        now = time.time()
        for r in rows:
            print(f"{r.host:<20} {r.pid:>7}  {r.state:<9} seen {now - r.last_seen:5.0f}s ago  jobs {r.jobs_done:>8}"
                  f"  {r.tubes}{'  holding ' + r.current_job if r.current_job else ''}")
        for target in registry.disabled_targets(store):
            print(f"disabled: {target}")
        return 0
    if not args.host:
        raise UsageError(f"workers {args.action} needs a HOST (and optionally --pid PID)")
    target = f"{args.host}:{args.pid}" if args.pid else args.host
    if args.action == "disable":
        registry.disable(store, target)
        print(f"disabled {target}: its workers finish the job in hand and exit 0 within"
              f" {settings.heartbeat:g}s; supervisord does not restart them")
        return 0
    if not registry.enable(store, target):
        raise CommandError(f"{target} was not disabled")
    print(f"enabled {target}")
    if args.host == registry.this_worker()[1]:
        started = ops.start_stopped_workers(settings)
        print(f"started {', '.join(started)}" if started else "no stopped worker process to start here")
    else:
        print(f"on {args.host}, start its workers again: supervisorctl -c supervisord.conf start beanmail:*")
    return 0


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    from .settings_doc import rows

    table = rows(settings)
    if args.json:
        print_json(table)
        return 0
    for r in table:
        print(f"{r['variable'] or '(toml) ' + r['toml']:<38} {r['value']}")
    return 0
