"""Digests at size: N notifications over R recipients in daily mode, collected by worker processes,
one period closed, the digests sent to Postfix's smtp-sink. Prints one JSON line of figures.

    python bench/digest.py [--items 100000] [--recipients 10000] [--workers 2] [--postgres]

Real servers started here (beanstalkd with a binlog, smtp-sink, PostgreSQL with --postgres); the
workers are `beanmail worker --burst` processes. Nothing is asserted: figures vary run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer import Notifier  # noqa: E402
from tests.servers import Beanstalkd, Postgres, SmtpSink  # noqa: E402
from worker.digest.close import GRACE, Closer  # noqa: E402
from worker.digest.records import DigestRecords  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.storage.dialect import POSTGRES  # noqa: E402
from worker.store import Store  # noqa: E402

BIN = Path(sys.executable).parent


def workers(n: int, env: dict[str, str], log: Path) -> float:
    """Seconds until ``n`` burst workers have emptied mail.normal."""
    started = time.monotonic()
    with open(log, "ab") as out:
        procs = [subprocess.Popen([str(BIN / "beanmail"), "worker", "--burst", "--tubes", "mail.normal"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT) for _ in range(n)]
        for p in procs:
            if p.wait(3600) != 0:
                raise SystemExit(f"a worker exited {p.returncode}; see {log}")
    return time.monotonic() - started


def store_size(store: Store, location: str) -> dict[str, object]:
    tables = ("digest_items", "digest_prefs", "deliveries")
    out: dict[str, object] = {t: int(store.db.one(f"SELECT count(*) FROM {t}")[0]) for t in tables}
    if store.db.dialect is POSTGRES:
        out["bytes"] = int(store.db.one("SELECT pg_database_size(current_database())")[0])
        out["digest_items_bytes"] = int(store.db.one("SELECT pg_total_relation_size('digest_items')")[0])
    else:
        store.db.run("PRAGMA wal_checkpoint(TRUNCATE)")
        out["bytes"] = os.path.getsize(location)
        pages = store.db.one("SELECT count(*) FROM dbstat WHERE name LIKE 'digest_items%'")
        out["digest_items_bytes"] = int(pages[0]) * int(store.db.one("PRAGMA page_size")[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--recipients", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--postgres", action="store_true", help="the store on PostgreSQL instead of SQLite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="beanmail-digest-bench-"))
    beanstalkd = Beanstalkd(tmp / "beanstalkd").start()
    sink = SmtpSink(dump=False, backlog=256)
    pg = Postgres().start() if args.postgres else None
    try:
        location = pg.create_database("digestbench") if pg else str(tmp / "store.sqlite3")
        settings = Settings(beanstalk_url=beanstalkd.url, smtp_url=sink.url, store=location,
                            templates=str(ROOT / "templates"), from_addr="Bench <bench@beanmail.example>")
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C", "BEANMAIL_BEANSTALK_URL": beanstalkd.url,
               "BEANMAIL_SMTP_URL": sink.url, "BEANMAIL_STORE": location, "BEANMAIL_TEMPLATES": settings.templates,
               "BEANMAIL_FROM": settings.from_addr, "BEANMAIL_SUPERVISOR_URL": f"unix://{tmp}/none.sock"}
        Store(location).close()  # migrated once, before the workers race for it
        notifier = Notifier(beanstalkd.url, blobs="", spool="")
        started = time.monotonic()
        per = args.items // args.recipients
        for n in range(args.items):
            r, i = n % args.recipients, n // args.recipients
            notifier.notify("comment", f"user{r}@example.com", {
                "issue": {"id": 1 + r % 50, "title": f"Issue {1 + r % 50}: login fails with a ü"},
                "comment": {"id": n, "author": f"author{i}",
                            "body": f"Comment {i} of {per}: fixed in 1.{i}, please verify."},
            }, key=f"comment:{n}:user{r}", digest="daily")
        enqueue_s = time.monotonic() - started
        notifier.close()
        collect_s = workers(args.workers, env, tmp / "collect.log")
        store = Store(location)
        before = store_size(store, location)
        waiting = DigestRecords(store).waiting()
        closer = Closer(settings, store)
        due = float(waiting["next_due"])
        started = time.monotonic()
        closed = closer.close(now=due + GRACE + 1, grace=GRACE)
        close_s = time.monotonic() - started
        closer.notifier.close()
        send_s = workers(args.workers, env, tmp / "send.log")
        sent = int(store.db.one("SELECT count(*) FROM deliveries WHERE key LIKE ? AND outcome = 'sent'",
                              ("digest:%",))[0])
        after = store_size(store, location)
        if store.db.dialect is POSTGRES:  # what autovacuum would leave: the closed rows' old versions gone
            store.db.run("VACUUM digest_items")
            after["digest_items_bytes_after_vacuum"] = int(
                store.db.one("SELECT pg_total_relation_size('digest_items')")[0])
        print(json.dumps({
            "scenario": "digest", "store": "postgresql" if pg else "sqlite", "items": args.items,
            "recipients": args.recipients, "workers": args.workers,
            "enqueue_s": round(enqueue_s, 1), "collect_s": round(collect_s, 1),
            "collect_per_s": round(args.items / collect_s),
            "close_s": round(close_s, 2), "digests_queued": closed.digests, "items_closed": closed.items,
            "send_s": round(send_s, 1), "digests_sent": sent, "send_per_s": round(sent / send_s),
            "store_before_close": before, "store_after": after,
        }), flush=True)
        store.close()
    finally:
        sink.stop()
        beanstalkd.stop(kill=True)
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
