"""`make run`'s main job: one notification through the running dev stack, checked in the catcher."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

from producer import Notifier

CATCHER = "http://127.0.0.1:1080"


def main() -> int:
    key = f"demo:{int(time.time())}"
    notifier = Notifier("beanstalk://127.0.0.1:11300")
    started = time.perf_counter()
    job = notifier.notify("welcome", "Zoë Demo <zoe@example.com>", {"name": "Zoë", "site": "beanmail demo"},
                          priority="urgent", key=key)
    enqueue_us = (time.perf_counter() - started) * 1e6
    print(f"enqueued job {job} (key {key}) in {enqueue_us:.0f} µs, connecting included")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{CATCHER}/api/email", timeout=5) as resp:
            mails = json.load(resp)
        if any(m.get("subject") == "Welcome to beanmail demo, Zoë!" for m in mails):
            print(f"delivered: the catcher has it ({len(mails)} message(s))")
            console = os.environ.get("BEANMAIL_WEB_LISTEN", "127.0.0.1:8025")
            print(f"\n  console:         http://{console}/  (metrics: /metrics, health: /healthz)"
                  f"\n  catcher web UI:  {CATCHER}/\n  processes:       .venv/bin/supervisorctl -c supervisord.conf status"
                  f"\n  queues:          .venv/bin/beanmail status\n  worker logs:     var/log/\n  stop it all:     make stop")
            return 0
        time.sleep(0.2)
    print("the demo mail did not reach the catcher within 30s: see var/log/", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
