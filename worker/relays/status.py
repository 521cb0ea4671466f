"""Each relay's state as `beanmail status` shows it: whether it answers now (a session opened and
closed), and what the workers last said of it (skipped until, bulk pace, queue length, held)."""

from __future__ import annotations

import time
from typing import Any

from ..settings import Settings
from ..store import Store, StoreCorrupt, StoreUnavailable
from . import board
from .plan import RelayPlan, relay_name


def relay_status(settings: Settings, timeout: float = 2.0) -> list[dict[str, Any]]:
    from ..health import probe_relays

    plan = RelayPlan.from_settings(settings)
    answers = probe_relays(settings, timeout)
    try:
        store = Store(settings.store, timeout=5)
        try:
            seen = {r["relay"]: r for r in board.read(store, settings.lost_after)}
        finally:
            store.close()
        error = ""
    except (StoreUnavailable, StoreCorrupt) as exc:
        seen, error = {}, str(exc)
    out = []
    for target in plan.relays:
        name = relay_name(target)
        row: dict[str, Any] = {"relay": name, "priorities": plan.priorities_of(target), "answers": not answers[name],
                               "error": answers[name], "workers": seen.get(name)}
        if error:
            row["workers_error"] = error
        out.append(row)
    return out


def relay_lines(relays: list[dict[str, Any]]) -> list[str]:
    lines = ["relays:"]
    for r in relays:
        now = "answers" if r["answers"] else f"does not answer ({r['error']})"
        line = f"  {r['relay']:<28}{','.join(r['priorities']):<20}{now}"
        w = r.get("workers")
        if w:
            if not w["up"]:
                until = time.strftime("%H:%M:%S", time.localtime(w["skipped_until"]))
                line += f"; workers skip it until {until} ({w['reason']})"
            if "bulk" in r["priorities"]:
                line += (f"; bulk pace {_rate(w['pace'])}/s ({_rate(w['sent_rate'])}/s sent,"
                         f" {w['processes']} process(es))")
                if w["queue"] >= 0:
                    line += f"; queue {w['queue']}"
                elif w["queue_error"]:
                    line += f"; queue unknown ({w['queue_error']})"
                if w["held"]:
                    line += f"; bulk HELD: {w['held']}"
        elif "workers_error" in r:
            line += f"; workers' view unknown ({r['workers_error']})"
        else:
            line += "; no worker reported on it lately"
        lines.append(line)
    return lines


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
