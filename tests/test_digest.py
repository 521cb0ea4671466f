"""Digests and quiet hours: collected notifications go as one message per recipient and template,
exactly once (a repeated key, a repeated digest job, a closer or a worker that dies midway), quiet
hours hold normal mail and never urgent mail; real beanstalkd, store (both engines) and SMTP."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from producer import Notifier
from producer.beanstalk import connect
from producer.envelope import Envelope, Recipient
from producer.prefs import Preferences
from worker.digest.close import Closer
from worker.digest.collect import Digests
from worker.digest.periods import Schedule, period_end, quiet_left
from worker.digest.records import DigestRecords
from worker.entities import Registry
from worker.fanout import Fanout
from worker.loop import Worker
from worker.outcomes import Deferred, Skipped
from worker.settings import Settings
from worker.store import Store

from .conftest import VENV_BIN, bare_env, beanmail, run_burst
from .servers import SmtpServer, wait_until

BERLIN = "Europe/Berlin"
RESET_SUBJECT = (Path(__file__).parent.parent / "templates/password_reset/subject.txt").read_text().strip()


def comment(n: int, issue: int = 12, title: str = "Login fails") -> dict[str, object]:
    return {"issue": {"id": issue, "title": title}, "comment": {"id": n, "author": f"author{n}", "body": f"Body {n}"}}


def close_all(settings: Settings) -> int:
    store = Store(settings.store)
    closer = Closer(settings, store)
    try:
        return closer.close(everything=True).digests
    finally:
        closer.notifier.close()
        store.close()


def waiting(settings: Settings) -> int:
    store = Store(settings.store)
    try:
        return DigestRecords(store).waiting()["items"]
    finally:
        store.close()


def tube_counts(settings: Settings, tube: str) -> dict[str, int]:
    with connect(settings.beanstalk_url, encoding=None) as c:
        if tube not in c.tubes():
            return {"ready": 0, "delayed": 0}
        s = c.stats_tube(tube)
        return {"ready": int(s["current-jobs-ready"]), "delayed": int(s["current-jobs-delayed"])}


def test_items_gathered_and_sent_as_one_message_each(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                                     store_location: str) -> None:
    """Three comments for Zoë and two watchers' mailout in daily mode, a preference that folds
    plain notifications for Bob, an urgent mail sent at once: after the close, one message per
    recipient and template, each item's context in it, the digest tables empty."""
    settings = settings.replace(store=store_location)
    prefs = Notifier(settings.beanstalk_url, blobs=store_location)
    prefs.set_preferences("Bob <BOB@example.com>", mode="daily", timezone=BERLIN)
    prefs.close()
    for n in (1, 2, 3):
        notifier.notify("comment", {"address": "zoe@example.com", "name": "Zoë"}, comment(n), key=f"c:{n}:zoe",
                        digest="daily")
    notifier.notify("comment", "bob@example.com", comment(4, issue=7, title="Dark mode"), key="c:4:bob")  # no digest=
    notifier.notify_watchers("comment", ["ann@example.com", "bob@example.com", "sam@example.com"],
                             actor="sam@example.com", context=comment(5), key="c:5", digest="daily")
    notifier.notify("password_reset", "zoe@example.com", {"reset_url": "https://x.example/r/1"}, priority="urgent",
                    key="reset:zoe")
    assert Worker(settings, Fanout(settings), Store(settings.store), tubes=("mailout",)).run(burst=True) == 0
    run_burst(settings)
    assert [m.rcpt_tos for m in smtp.messages] == [["zoe@example.com"]]  # the urgent one, at once
    assert waiting(settings) == 6
    log = json.loads(beanmail("log", "--key", "c:1:zoe", "--json", env=bare_env(settings)).stdout)
    assert log[0]["outcome"] == "skipped" and log[0]["reason"].startswith("collected into the daily digest due ")

    assert close_all(settings) == 3
    run_burst(settings)
    digests = {m.rcpt_tos[0]: m.message for m in smtp.wait_for(4)[1:]}
    assert sorted(digests) == ["ann@example.com", "bob@example.com", "zoe@example.com"]
    zoe = digests["zoe@example.com"]
    assert zoe["Subject"] == "3 new comments on #12 Login fails"
    text = zoe.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert re.findall(r"^  \d{4}-\d\d-\d\d \d\d:\d\d  (author\d):$", text, re.M) == ["author1", "author2", "author3"]
    assert "Body 3" in zoe.get_body(("html",)).get_content()
    bob = digests["bob@example.com"].get_body(("plain",)).get_content()
    assert digests["bob@example.com"]["Subject"] == "2 new comments on 2 issues you watch"
    assert '#7 "Dark mode"' in bob and '#12 "Login fails"' in bob and "author4" in bob and "author5" in bob
    assert waiting(settings) == 0
    store = Store(settings.store)
    keys = [d.key for d in store.deliveries(recipient="zoe@example.com") if d.key.startswith("digest:")]
    assert len(keys) == 1 and keys[0].startswith("digest:zoe@example.com:comment:")
    assert store.deliveries(key=keys[0])[0].outcome == "sent"
    assert store._one("SELECT count(*) FROM digest_items")[0] == 0
    store.close()
    assert close_all(settings) == 0


def test_a_repeated_key_is_one_item_a_repeated_digest_one_message_and_a_long_one_is_bounded(
        settings: Settings, smtp: SmtpServer) -> None:
    """Signed jobs, too: the closer signs each digest with the workers' first key."""
    settings = dataclasses.replace(settings, digest_max_items=5, digest_group="recipient", secret="new,old")
    notifier = Notifier(settings.beanstalk_url, secret="old")
    for n in range(12):
        notifier.notify("comment", "zoe@example.com", comment(n), key=f"c:{n}", digest="hourly")
    notifier.notify("comment", "zoe@example.com", comment(0), key="c:0", digest="hourly")  # the same key again
    notifier.notify("welcome", "zoe@example.com", {"name": "Zoë"}, key="w:1", digest="hourly")
    run_burst(settings)
    assert waiting(settings) == 13 and not smtp.messages

    store = Store(settings.store)
    closer = Closer(settings, store)
    keys, _ = closer.records.assign(float("inf"), time.time(), closer.key)
    assert len(keys) == 1 and keys[0].startswith("digest:zoe@example.com:*:")
    closer.notifier.put(closer.envelope(closer.records.batches(keys, 5)[0]))  # a second job, the same key
    done = closer.close(stale=0)  # queues it (again), as if its first closer had died after the put
    assert done.resumed == 1 and done.digests == 1 and done.items == 13
    closer.notifier.close()
    run_burst(settings)
    assert len(smtp.messages) == 1
    message = smtp.messages[0].message
    assert message["Subject"] == "13 new notifications (hourly digest)"
    text = message.get_body(("plain",)).get_content()
    assert "The newest 5 of 13 notifications (8 older not shown)" in text
    assert "Welcome" in text or "welcome" in text.lower()  # the other template's own subject and text
    assert text.count("* 20") == 5  # five items, each with its time
    assert store.deliveries(key=keys[0])[0].outcome == "sent"
    store.close()
    notifier.close()


def test_a_closer_that_stops_midway_and_a_worker_killed_after_the_claim_send_the_digest_once(
        settings: Settings, notifier: Notifier, smtp: SmtpServer, store_location: str) -> None:
    settings = settings.replace(store=store_location, ttr=10)
    for n in (1, 2):
        notifier.notify("comment", "zoe@example.com", comment(n), key=f"c:{n}", digest="weekly")
    run_burst(settings)
    store = Store(settings.store)
    closer = Closer(settings, store)
    keys, _ = closer.records.assign(float("inf"), time.time(), closer.key)
    closer.notifier.put(closer.envelope(closer.records.batches(keys, 50)[0]))  # ...and the closer dies here
    done = closer.close(stale=0)  # the next closer queues it again under the same key
    assert done.resumed == 1 and done.items == 2 and waiting(settings) == 0
    assert tube_counts(settings, "mail.normal")["ready"] == 2

    smtp.handler.data_delay = 20  # the worker will hang in DATA until it is killed
    proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "worker", "--tubes", "mail.normal"],
                            env=bare_env(settings, BEANMAIL_STORE=store_location), cwd=Path(__file__).parent.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: (d := store.deliveries(key=keys[0])) and d[0].outcome == "claimed", 20, "the claim")
        # the kill falls in the final-reply window: the content is at the server, no reply yet
        wait_until(lambda: smtp.handler.data_received >= 1, 20, "the end of data at the server")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    smtp.handler.data_delay = 0
    settings = settings.replace(in_doubt_delay=1)
    run_burst(settings)  # beanstalkd gave the job back with the dead worker's connection...
    # ...whose journal says the end of its data went: in doubt, sent again only after the delay
    assert store.deliveries(key=keys[0])[0].outcome == "in_doubt" and not smtp.messages
    wait_until(lambda: tube_counts(settings, "mail.normal")["delayed"] == 0, 10, "the in-doubt delay to pass")
    run_burst(settings)
    sent = [m for m in smtp.messages if m.rcpt_tos == ["zoe@example.com"]]
    record = store.deliveries(key=keys[0])[0]
    assert record.outcome == "sent" and record.attempts == 2
    assert 1 <= len(sent) <= 2  # a second copy only if the kill fell after the server took the data
    assert len(sent) == 1, "aiosmtpd dropped the killed session's message"
    assert "author1" in sent[0].message.get_body(("plain",)).get_content()
    assert store._one("SELECT count(*) FROM digest_items")[0] == 0
    store.close()


def _digests(tmp_path: Path, **changes: object) -> tuple[Digests, DigestRecords]:
    settings = Settings(store=str(tmp_path / "store.sqlite3"), quiet_recheck=86400, **changes)
    store = Store(settings.store)
    digests = Digests(settings, store, Registry())
    return digests, digests.records


def _at(text: str, tz: str = BERLIN) -> float:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def _mail(key: str, *, priority: str = "normal", digest: str = "", created_at: float = 1.0) -> Envelope:
    return Envelope(kind="mail", id=key, to=(Recipient("zoe@example.com"),), template="comment",
                    context=comment(1), priority=priority, digest=digest, created_at=created_at)


def test_quiet_hours_hold_normal_mail_until_they_end_and_never_urgent_mail(tmp_path: Path) -> None:
    """A fake clock: 22:00-07:00 in Berlin holds at 23:30 for 7.5 hours (a free release), lets
    07:00 through, never holds urgent mail; mail made before `flush --all` lifted them goes."""
    digests, records = _digests(tmp_path)
    records.set_preferences(Preferences("zoe@example.com", "", BERLIN, 22 * 60, 7 * 60))
    night = _at("2026-11-23T23:30")
    with pytest.raises(Deferred) as held:
        digests.divert(_mail("a", created_at=night), now=night)
    assert 7.5 * 3600 <= held.value.delay < 7.5 * 3600 + 60 and held.value.reason.startswith("quiet hours until")
    with pytest.raises(Deferred):
        digests.divert(_mail("compiled", digest="compiled", created_at=night), now=night)  # a digest waits too
    digests.divert(_mail("b", priority="urgent", created_at=night), now=night)  # goes
    digests.divert(_mail("a", created_at=night), now=_at("2026-11-24T07:00"))  # released
    digests.divert(_mail("a", created_at=night), now=_at("2026-11-23T21:59"))
    records.lift_quiet_hours(night + 1)
    digests.divert(_mail("a", created_at=night), now=night + 60)  # lifted for what was made before
    with pytest.raises(Deferred):
        digests.divert(_mail("c", created_at=night + 30), now=night + 60)  # made after: held
    # quiet hours of the settings for those who set none; across a DST change (29 March 2026)
    digests, _ = _digests(tmp_path / "2", quiet_hours="01:00-04:00", digest_timezone=BERLIN)
    with pytest.raises(Deferred) as held:
        digests.divert(_mail("d"), now=_at("2026-03-29T01:30"))
    assert held.value.delay < 1.5 * 3600 + 60  # 01:30 -> 04:00 is 1.5 hours that night


def test_preferences_decide_over_the_job_and_periods_end_in_the_recipients_time_zone(tmp_path: Path) -> None:
    digests, records = _digests(tmp_path, digest_hour=8)
    now = _at("2026-11-23T09:15")
    records.set_preferences(Preferences("zoe@example.com", "immediate", BERLIN))
    digests.divert(_mail("a", digest="daily"), now=now)  # immediate wins over the job's daily
    records.set_preferences(Preferences("zoe@example.com", "weekly", BERLIN))
    with pytest.raises(Skipped, match="weekly digest due 2026-11-30 08:00 Europe/Berlin"):
        digests.divert(_mail("b"), now=now)  # a plain notification folded in
    digests.divert(_mail("c", priority="urgent"), now=now)  # never folded
    records.set_preferences(Preferences("zoe@example.com", "off", BERLIN))
    with pytest.raises(Skipped, match="turned notifications off"):
        digests.divert(_mail("d"), now=now)
    with pytest.raises(Skipped, match="turned notifications off"):
        digests.divert(_mail("digest:zoe", digest="compiled"), now=now)  # one collected before, too
    records.clear_preferences("zoe@example.com")
    digests.divert(_mail("e"), now=now)  # no preference, no digest field: goes now
    assert records.waiting()["items"] == 1
    from zoneinfo import ZoneInfo

    s, berlin = Schedule(hour=8, weekday=0), ZoneInfo(BERLIN)
    assert period_end("daily", _at("2026-11-23T07:59"), berlin, s) == _at("2026-11-23T08:00")
    assert period_end("daily", _at("2026-11-23T08:00"), berlin, s) == _at("2026-11-24T08:00")
    assert period_end("hourly", _at("2026-03-29T01:30"), berlin, s) == _at("2026-03-29T03:00")  # 02:00 never was
    assert period_end("daily", _at("2026-10-24T09:00"), berlin, s) - _at("2026-10-24T09:00") == 24 * 3600  # 25 h day
    assert period_end("weekly", _at("2026-11-25T12:00"), berlin, s) == _at("2026-11-30T08:00")
    assert quiet_left(_at("2026-11-23T12:00"), berlin, 22 * 60, 7 * 60) == 0


def test_quiet_hours_end_to_end_and_flush_all_releases_what_they_hold(settings: Settings, notifier: Notifier,
                                                                    smtp: SmtpServer) -> None:
    env = bare_env(settings)
    now = datetime.now(timezone.utc)
    window = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"
    beanmail("digest", "prefs", "set", "Zoë <zoe@example.com>", "--quiet", window, "--timezone", "UTC", env=env)
    shown = json.loads(beanmail("digest", "prefs", "get", "zoe@example.com", "--json", env=env).stdout)
    assert shown == {"address": "zoe@example.com", "mode": "default", "timezone": "UTC", "quiet": window}
    notifier.notify("comment", "zoe@example.com", comment(1), key="held")
    notifier.notify("password_reset", "zoe@example.com", {"reset_url": "https://x.example/r"}, priority="urgent",
                    key="u")
    notifier.notify("comment", "zoe@example.com", comment(2), key="later", digest="daily")
    run_burst(settings)
    assert [m.message["Subject"] for m in smtp.messages] == [RESET_SUBJECT]  # urgent: never held
    assert tube_counts(settings, "mail.normal")["delayed"] == 1  # held, not failed
    log = json.loads(beanmail("log", "--key", "held", "--json", env=env).stdout)
    assert log[0]["outcome"] == "deferred" and log[0]["reason"].startswith("quiet hours until")
    status = json.loads(beanmail("digest", "status", "--json", env=env).stdout)
    assert status["items"] == 1 and status["recipients"] == 1

    out = json.loads(beanmail("digest", "flush", "--all", "--json", env=env).stdout)
    assert out["digests"] == 1 and out["items"] == 1 and out["released"] == 1  # the held mail
    run_burst(settings)
    subjects = sorted(m.message["Subject"] for m in smtp.wait_for(3)[1:])
    assert subjects == ["1 new comment on #12 Login fails", "[#12] Login fails: new comment by author1"]
    assert tube_counts(settings, "mail.normal") == {"ready": 0, "delayed": 0}
    assert json.loads(beanmail("digest", "flush", "--json", env=env).stdout)["digests"] == 0


def test_the_example_tracker_offers_immediately_or_a_daily_digest(settings: Settings, smtp: SmtpServer,
                                                                  tmp_path: Path) -> None:
    import io
    from wsgiref.util import setup_testing_defaults

    from examples.tracker.app import Tracker

    notifier = Notifier(settings.beanstalk_url, blobs=settings.store)
    app = Tracker(str(tmp_path / "tracker.sqlite3"), notifier)

    def request(method: str, path: str, body: str = "") -> tuple[str, str]:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
                   "wsgi.input": io.BytesIO(body.encode())}
        setup_testing_defaults(environ)
        status: list[str] = []
        out = b"".join(app(environ, lambda s, h: status.append(s)))
        return status[0], out.decode()

    assert request("POST", "/prefs", "email=ann%40example.com&mode=daily")[0].startswith("303")
    page = request("GET", "/prefs")[1]
    assert 'value="daily" checked>daily digest' in page and 'value="immediate" checked>immediately' in page
    app.comment(1, "cat@example.com", "first")
    app.comment(1, "cat@example.com", "second")
    assert Worker(settings, Fanout(settings), Store(settings.store), tubes=("mailout",)).run(burst=True) == 0
    run_burst(settings)
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["bob@example.com"] * 2  # Ann chose the digest
    assert close_all(settings) == 1
    run_burst(settings)
    ann = smtp.wait_for(3)[2]
    assert ann.rcpt_tos == ["ann@example.com"] and ann.message["Subject"].startswith("2 new comments on #1 ")
    notifier.close()


def test_two_closers_at_once_queue_each_digest_once(settings: Settings, store_location: str) -> None:
    """Two hosts' closers close the same period at the same instant: every item goes into exactly
    one digest job, every recipient gets one."""
    import threading

    settings = settings.replace(store=store_location)
    first = Store(store_location)
    records = DigestRecords(first)
    for r in range(300):
        for i in range(2):
            records.collect(f"c:{r}:{i}", f"user{r}@example.com", "comment", "comment", 1000.0, 10.0 + i,
                            {"template": "comment", "context": comment(i), "period": "daily", "tz": "UTC"}, "collected")
    closers = [Closer(settings, first), Closer(settings, Store(store_location))]
    results: list[object] = []
    start = threading.Barrier(2)

    def close(c: Closer) -> None:
        start.wait()
        results.append(c.close(now=2000.0))

    threads = [threading.Thread(target=close, args=(c,)) for c in closers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.digests for r in results) == 300 and sum(r.items for r in results) == 600  # type: ignore[attr-defined]
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.watch("mail.normal")
        bodies = [json.loads(c.reserve(timeout=0).body) for _ in range(300)]
        assert int(c.stats_tube("mail.normal")["current-jobs-ready"]) == 0
    assert len({b["to"]["address"] for b in bodies}) == 300 and len({b["id"] for b in bodies}) == 300
    assert all(b["context"]["count"] == 2 for b in bodies)
    assert records.waiting()["items"] == 0
    for c in closers:
        c.notifier.close()
        c.records.store.close()
