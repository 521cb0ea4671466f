"""Scheduled mailouts: held in the store until due (send_at, or send_at_local in each recipient's
own time zone), released by `beanmail fanout`, cancelled and listed by key."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from producer import Notifier
from producer.client import connect
from producer import schedule as sched
from producer.schedule import ScheduleError, local_due
from worker.settings import Settings
from worker.store import Store

from .conftest import VENV_BIN, bare_env, beanmail
from .servers import SmtpServer, wait_until


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# Saturday 28 March 2026, 12:00 UTC: Berlin changes to summer time that night at 02:00
NOW = utc(2026, 3, 28, 12, 0)


@pytest.mark.parametrize("zone_name, expected", [
    ("Europe/Berlin", utc(2026, 3, 29, 6, 0)),  # 08:00 CEST (+02:00, the day after the change)
    ("America/New_York", utc(2026, 3, 29, 12, 0)),  # 08:00 EDT; today's 08:00 (12:00 UTC) is now, not ahead
    ("Pacific/Kiritimati", utc(2026, 3, 28, 18, 0)),  # +14:00: it is 02:00 on the 29th there
    ("Asia/Kolkata", utc(2026, 3, 29, 2, 30)),  # +05:30: 17:30 there now, so tomorrow's
    ("UTC", utc(2026, 3, 29, 8, 0)),
])
def test_the_next_local_eight_o_clock_in_each_zone(zone_name: str, expected: float) -> None:
    assert local_due("08:00", zone_name, NOW) == expected
    assert datetime.fromtimestamp(expected, ZoneInfo(zone_name)).strftime("%H:%M") == "08:00"


def test_a_local_time_on_a_given_day_and_across_daylight_saving() -> None:
    assert local_due("2026-03-30 08:00", "Europe/Berlin", NOW) == utc(2026, 3, 30, 6, 0)
    assert local_due(datetime(2026, 3, 27, 8, 0), "Europe/Berlin", NOW) == utc(2026, 3, 27, 7, 0)  # CET, a past day
    # 02:30 does not exist in Berlin on the 29th: the clock reads 03:30 CEST then (01:30 UTC)
    assert local_due("02:30", "Europe/Berlin", NOW) == utc(2026, 3, 29, 1, 30)
    # New York's 01:30 on 1 November 2026 happens twice: the first (EDT, 05:30 UTC)
    assert local_due("2026-11-01 01:30", "America/New_York", NOW) == utc(2026, 11, 1, 5, 30)
    for bad in ("8 o'clock", "24:00", "2026-02-30 08:00", datetime(2026, 3, 30, 8, tzinfo=timezone.utc)):
        with pytest.raises(ScheduleError):
            local_due(bad, "UTC", NOW)  # type: ignore[arg-type]


def test_send_at_local_groups_recipients_by_their_own_time_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sched, "clock", lambda: NOW)
    monkeypatch.setenv("BEANMAIL_DIGEST_TIMEZONE", "Asia/Kolkata")  # for those with no preference
    notifier = Notifier("beanstalk://127.0.0.1:1", blobs=str(tmp_path / "store.sqlite3"))  # nothing is put now
    notifier.set_preferences("ana@example.com", timezone="Europe/Berlin")
    notifier.set_preferences("ben@example.com", timezone="America/New_York")
    notifier.set_preferences("cy@example.com", timezone="Europe/Berlin")
    everyone = ["ana@example.com", "ben@example.com", "cy@example.com", "dee@example.com"]
    assert notifier.mailout("welcome", everyone, {"name": "x"}, key="monday", send_at_local="08:00") == []
    store = notifier.schedule_store()
    chunks = store._rows("SELECT due_at, body FROM mailout_chunks WHERE key = 'monday' ORDER BY due_at")
    from producer import envelope as env

    assert [(due, sorted(r.address for r in env.decode(bytes(body)).to)) for due, body in chunks] == [
        (utc(2026, 3, 29, 2, 30), ["dee@example.com"]),
        (utc(2026, 3, 29, 6, 0), ["ana@example.com", "cy@example.com"]),
        (utc(2026, 3, 29, 12, 0), ["ben@example.com"]),
    ]
    [listed] = store.list()
    assert (listed.state, listed.recipients, listed.chunks, listed.local) == ("scheduled", 4, 3, "08:00")
    assert (listed.send_at, listed.last_at) == (utc(2026, 3, 29, 2, 30), utc(2026, 3, 29, 12, 0))

    with pytest.raises(ScheduleError, match="already scheduled"):
        notifier.mailout("welcome", everyone, key="monday", send_at_local="08:00")
    with pytest.raises(ScheduleError, match="no time zone"):
        notifier.mailout("welcome", everyone, key="naive", send_at=datetime(2026, 3, 30, 8, 0))
    with pytest.raises(ScheduleError, match="not in the future"):
        notifier.mailout("welcome", everyone, key="past", send_at=NOW - 1)
    for never in (float("inf"), float("nan"), 1e300):  # no page or command can show such a time
        with pytest.raises(ScheduleError, match="is not a time within 366 days"):
            notifier.mailout("welcome", everyone, key=f"never-{never}", send_at=never)
    with pytest.raises(ScheduleError, match="2026-03-27 08:00 is past for dee@example.com"):
        notifier.mailout("welcome", everyone, key="yesterday", send_at_local="2026-03-27 08:00")
    with pytest.raises(ScheduleError, match="must look like 08:00"):
        notifier.mailout("welcome", everyone, key="bad", send_at_local="8am")
    assert [m.key for m in store.list(sched.STATES)] == ["monday"]  # the refused ones left nothing behind
    notifier.mailout("welcome", [], key="nobody", send_at=NOW + 60)
    assert store.get("nobody").state == "released"  # nothing to wait for: never listed as scheduled
    notifier.close()


def test_a_scheduled_mailout_goes_when_due_and_a_cancelled_one_never(settings: Settings, smtp: SmtpServer) -> None:
    """Real beanstalkd, `beanmail fanout` (which releases due mailouts) and `beanmail worker`: a
    mailout 2 s ahead is not delivered before its time and is after; one cancelled with
    `beanmail mailout cancel` is never delivered, though its time passed long before."""
    env = bare_env(settings)
    notifier = Notifier(settings.beanstalk_url, blobs=settings.store)
    notifier.mailout("welcome", ["cy@example.com"], {"name": "you"}, key="news:cancelled", send_at=time.time() + 1)
    listed = json.loads(beanmail("mailout", "list", "--json", env=env).stdout)
    assert [(m["key"], m["state"], m["recipients"]) for m in listed] == [("news:cancelled", "scheduled", 1)]
    out = beanmail("mailout", "cancel", "news:cancelled", env=env).stdout
    assert "cancelled news:cancelled: 1 of 1 recipient(s) will not get it" in out
    again = beanmail("mailout", "cancel", "news:cancelled", env=env, check=False)
    assert again.returncode == 1 and "is cancelled: nothing left to cancel" in again.stderr

    procs = [subprocess.Popen([str(VENV_BIN / "beanmail"), *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for args in (["fanout"], ["worker", "--tubes", "mail.bulk"])]
    try:
        def watched(tube: str) -> bool:
            with connect(settings.beanstalk_url, encoding=None) as c:
                return tube in c.tubes() and int(c.stats_tube(tube)["current-watching"]) >= 1
        wait_until(lambda: watched("mailout") and watched("mail.bulk"), 30, "the fan-out and the worker to start")
        due = time.time() + 2.0
        notifier.mailout("welcome", ["ana@example.com", "ben@example.com"], {"name": "you"}, key="news:1",
                         send_at=datetime.fromtimestamp(due, timezone.utc))
        while time.time() < due - 0.2:  # running, idle, until just before its time: nothing goes early
            assert smtp.messages == []
            time.sleep(0.05)
        got = smtp.wait_for(2, timeout=20)
        assert sorted(m.rcpt_tos[0] for m in got) == ["ana@example.com", "ben@example.com"]
        store = Store(settings.store)
        sent = store.deliveries(key="news:1:ana@example.com") + store.deliveries(key="news:1:ben@example.com")
        assert [d.outcome for d in sent] == ["sent", "sent"] and min(d.updated_at for d in sent) >= due
        wait_until(lambda: json.loads(beanmail("mailout", "progress", "news:1", "--json", env=env).stdout)["left"] == 0,
                   10, "progress to show nothing left")
        progress = json.loads(beanmail("mailout", "progress", "news:1", "--json", env=env).stdout)
        assert (progress["state"], progress["total"], progress["sent"], progress["left"]) == ("released", 2, 2, 0)
        assert store.deliveries(recipient="cy@example.com") == []  # its time was long past when the fan-out ran
        store.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    assert [m.rcpt_tos for m in smtp.messages if "cy@example.com" in m.rcpt_tos] == []
    everything = {m["key"]: m["state"] for m in json.loads(beanmail("mailout", "list", "--all", "--json", env=env).stdout)}
    assert everything == {"news:1": "released", "news:cancelled": "cancelled"}
    notifier.close()


def test_the_schedule_on_both_store_engines(store_location: str) -> None:
    """The store's SQL on SQLite and PostgreSQL: held until due, leased once, released with its
    last chunk, cancelled with what is left; progress counted from the delivery log."""
    Store(store_location).close()  # the workers' store, with its delivery log
    notifier = Notifier("beanstalk://127.0.0.1:1", blobs=store_location)
    now = time.time()
    notifier.mailout("welcome", [f"r{i}@example.com" for i in range(3)], key="a", send_at=now + 100)
    notifier.mailout("welcome", ["s@example.com"], key="b", send_at=now + 200)
    other = sched.Schedule(store_location)  # a second releaser, as on a second host
    schedule = notifier.schedule_store()
    assert schedule.due(now) == []
    [(key, n, priority, body)] = schedule.due(now + 150)
    assert (key, n, priority) == ("a", 0, "bulk") and other.due(now + 150) == []  # leased: one releaser has it
    schedule.released(key, n)
    assert [(m.key, m.state, m.chunks) for m in schedule.list(sched.STATES)] == [("a", "released", 0), ("b", "scheduled", 1)]

    store = Store(store_location)
    store.finish("a:r0@example.com", "r0@example.com", "welcome", "sent")
    store.finish("a:r1@example.com", "r1@example.com", "welcome", "bounced", "550 no such user")
    store.finish("ab:x@example.com", "x@example.com", "welcome", "sent")  # another mailout's key, sharing a prefix
    store.close()
    from worker.mailout_progress import mailout_progress

    p = mailout_progress(store_location, "a")
    assert (p.state, p.total, p.sent, p.bounced, p.left, p.held) == ("released", 3, 1, 1, 1, 0)
    assert mailout_progress(store_location, "b").held == 1

    with pytest.raises(ScheduleError, match="is released: nothing left to cancel"):
        schedule.cancel("a")
    cancelled, unsent = other.cancel("b")
    assert (cancelled.state, unsent) == ("cancelled", 1) and schedule.due(now + 1000) == []
    with pytest.raises(ScheduleError, match="no mailout 'c' is scheduled"):
        schedule.cancel("c")
    other.close()
    notifier.close()
