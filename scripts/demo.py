"""`make run`'s main job: one notification through the running dev stack, its fate read by its own
key and job id (never by matching an older mail in the catcher)."""

from __future__ import annotations

import os
import sys
import time

import greenstalk

from producer import Notifier
from producer.client import connect
from worker.settings import Settings, load
from worker.store import Store

CATCHER = "http://127.0.0.1:1080"
ENDED = {"sent", "skipped", "bounced"}  # what the ledger records when a job ended


def fate(settings: Settings, job_id: int, key: str, timeout: float = 30.0) -> tuple[str, str]:
    """``(outcome, detail)`` of one job once it ended: sent, skipped or bounced (the store's ledger,
    by key), buried (beanstalkd, with the reason the worker recorded), or ``("waiting", why)`` when
    it has not ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    store = Store(settings.store)
    try:
        state = "unknown"
        while time.monotonic() < deadline:
            rows = store.deliveries(key=key, limit=1)
            if rows and rows[0].outcome in ENDED:
                return rows[0].outcome, "; ".join(x for x in (rows[0].reason, rows[0].reply) if x)
            with connect(settings.beanstalk_url, encoding=None) as client:
                try:
                    state = str(client.stats_job(job_id)["state"])
                except greenstalk.NotFoundError:
                    state = "gone"
            if state == "buried":
                failure = store.failure(settings.beanstalk_url, job_id)
                return "buried", failure[1] if failure else "no reason recorded"
            time.sleep(0.1)
        return "waiting", f"job {job_id} is still {state} after {timeout:.0f} s"
    finally:
        store.close()


def main() -> int:
    settings = load()
    key = f"demo:{time.time_ns()}"
    notifier = Notifier(settings.beanstalk_url, secret=settings.secret or None)
    started = time.perf_counter()
    job = notifier.notify("welcome", "Zoë Demo <zoe@example.com>", {"name": "Zoë", "site": "beanmail demo"},
                          priority="urgent", key=key)
    enqueue_us = (time.perf_counter() - started) * 1e6
    print(f"enqueued job {job} (key {key}) in {enqueue_us:.0f} µs, connecting included")
    outcome, detail = fate(settings, job, key)
    if outcome != "sent":
        print(f"the demo mail was not delivered: {outcome}: {detail}\n  see `.venv/bin/beanmail log --key {key}`,"
              f" `.venv/bin/beanmail buried` and var/log/", file=sys.stderr)
        return 1
    console = os.environ.get("BEANMAIL_WEB_LISTEN", "127.0.0.1:8025")
    print(f"delivered: {detail or 'sent'}  (`.venv/bin/beanmail log --key {key}`)"
          f"\n\n  console:         http://{console}/  (metrics: /metrics, health: /healthz)"
          f"\n  catcher web UI:  {CATCHER}/\n  processes:       .venv/bin/supervisorctl -c supervisord.conf status"
          f"\n  queues:          .venv/bin/beanmail status\n  worker logs:     var/log/\n  stop it all:     make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
