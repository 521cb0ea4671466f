"""`make run`'s demo reports its own job's fate, read by key and job id: a buried demo job is
reported buried with its reason even when an earlier demo's mail is in the catcher."""

from __future__ import annotations

import importlib.util

from producer import Notifier
from worker.settings import Settings

from .conftest import ROOT, run_burst

spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
assert spec and spec.loader
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def test_the_demo_reports_sent_for_its_own_job_and_buried_with_the_reason(settings: Settings,
                                                                         notifier: Notifier) -> None:
    sent = notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, priority="urgent", key="demo:1")
    run_burst(settings)
    assert demo.fate(settings, sent, "demo:1", timeout=10)[0] == "sent"
    # the same mail again, but its job cannot render: an earlier copy in the catcher must not count
    buried = notifier.notify("welcome", "Zoë <zoe@example.com>", {}, priority="urgent", key="demo:2")
    run_burst(settings)
    outcome, detail = demo.fate(settings, buried, "demo:2", timeout=10)
    assert outcome == "buried" and "'name' is undefined" in detail
    waiting = notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, priority="urgent", key="demo:3")
    assert demo.fate(settings, waiting, "demo:3", timeout=0.5)[0] == "waiting"
