"""The console an operator lives in (docs/console.md): deferred mail with its next attempt and
last reason, pause/resume a tube, disable/enable a host, kick/delete buried jobs by filter, a
mailout's progress, the log by key prefix, live refresh, the events and replies pages. Real
beanstalkd, real store, real workers and SMTP; the console is the real `beanmail web`."""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlencode

import pytest

from producer import Notifier
from producer.client import connect
from worker import ops, registry
from worker.events.deliver import Runner
from worker.events.emit import emit
from worker.events.inbound import handle
from worker.events.model import FAILED, SENT, Event
from worker.fanout import Fanout
from worker.loop import Worker
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, job_state, run_burst
from .endpoint import Endpoint
from .servers import Beanstalkd, SmtpServer, wait_until
from .test_web import Console, browser, bury_by_hand, csrf_of, start_console, stop_console  # noqa: F401

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint(answer=lambda n: 503).start()
    yield e
    e.stop()


@pytest.fixture
def events_settings(settings: Settings, endpoint: Endpoint) -> Settings:
    return settings.replace(events_url=endpoint.url, events_secret=SECRET)


@pytest.fixture
def console(events_settings: Settings) -> Iterator[Console]:
    c = start_console(events_settings, BEANMAIL_EVENTS_URL=events_settings.events_url,
                      BEANMAIL_EVENTS_SECRET=SECRET)
    yield c
    stop_console(c)


def tube_stats(settings: Settings, tube: str) -> dict[str, int]:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return {k: int(v) for k, v in c.stats_tube(tube).items() if str(v).isdigit()}


def flash_of(console: Console, location: str) -> str:
    status, _, page = console.get(location)
    assert status == 200
    found = re.search(r'<div class="flash" id="flash">(.*?)</div>', page, re.S)
    assert found, page[:300]
    return found.group(1)


def job_body(template: str, to: str, key: str) -> bytes:
    return (f'{{"v":2,"kind":"mail","id":"{key}","to":{{"address":"{to}"}},"template":"{template}",'
            f'"context":{{}}}}').encode()


# -- deferred mail --------------------------------------------------------------------------------

def test_deferred_mail_shows_when_it_is_tried_next_and_why_it_was_put_off(settings: Settings, notifier: Notifier,
                                                                          smtp: SmtpServer, console: Console) -> None:
    tempfail = notifier.notify("welcome", "Tem <tempfail@example.com>", {"name": "T"}, key="def:tempfail")
    later = notifier.notify("welcome", "Lou <lou@example.com>", {"name": "L"}, key="def:later", delay=900)
    notifier.notify("welcome", "Ann <ann@example.com>", {"name": "A"}, key="def:ann")
    raw = notifier.send_raw(b"From: app@example.com\r\nTo: tempfail-2@example.com\r\nSubject: Your invoice =?utf-8?q?n=C2=BA?= 7"
                            b" <b>\r\n\r\nHello\r\n", ["tempfail-2@example.com"], key="django:<1@app>")
    before = time.time()
    run_burst(settings.replace(backoff_base=600, backoff_max=1200))  # a retry ten minutes or more away
    smtp.wait_for(1)
    status, _, page = console.get("/deferred")
    assert status == 200 and 'id="deferred-count">3<' in page
    rows = dict(re.findall(r'<tr data-job="(\d+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {str(tempfail), str(later), str(raw)}
    assert re.search(r'<td>raw<br><span class="muted">Your invoice nº 7 &lt;b&gt;</span></td>', rows[str(raw)])
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[str(tempfail)], re.S)
    # job, tube, next attempt, in, tries, template, recipient, key, last reason
    next_at = time.mktime(time.strptime(cells[2], "%Y-%m-%d %H:%M:%S"))
    assert before + 300 - 2 <= next_at <= time.time() + 1200 + 2
    assert cells[4] == "1" and cells[5] == "welcome" and cells[6] == "t***@example.com" and cells[7] == "def:tempfail"
    assert "451 4.3.0" in cells[8]
    later_cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[str(later)], re.S)
    assert later_cells[4] == "0" and later_cells[8] == "not tried yet: queued with a delay"
    assert "tempfail@example.com" not in page  # masked, as everywhere
    assert job_state(settings, tempfail) == "delayed"  # looking changed nothing


# -- tubes and hosts ------------------------------------------------------------------------------

def test_a_tube_paused_and_resumed_from_the_page_each_a_csrf_guarded_post(settings: Settings, notifier: Notifier,
                                                                          console: Console) -> None:
    notifier.notify("welcome", "ann@example.com", {"name": "A"}, key="pause:1")
    cookie, token = csrf_of(console, "/")
    status, _, page = console.get("/")
    assert 'id="pause-mail.normal"' in page
    # a GET, no token, a wrong token, a bad tube or duration: nothing paused
    assert console.get("/tube/pause?" + urlencode({"tube": "mail.normal", "seconds": "300"}))[0] == 405
    assert console.post("/tube/pause", {"tube": "mail.normal", "seconds": "300"}, Cookie=cookie)[0] == 403
    assert console.post("/tube/pause", {"tube": "mail.normal", "seconds": "300", "csrf": "0" * 64},
                        Cookie=cookie)[0] == 403
    assert console.post("/tube/pause", {"tube": "mail.normal", "seconds": "99999999999999", "csrf": token},
                        Cookie=cookie)[0] == 400
    assert console.post("/tube/pause", {"tube": "bad tube\n" + "x" * 5000, "seconds": "300", "csrf": token},
                        Cookie=cookie)[0] == 400
    assert tube_stats(settings, "mail.normal")["pause"] == 0
    status, headers, _ = console.post("/tube/pause", {"tube": "mail.normal", "seconds": "300", "csrf": token},
                                      Cookie=cookie)
    assert status == 303
    assert flash_of(console, headers["location"]) == "paused tube mail.normal for 5 min: 1 tube"
    assert 290 <= tube_stats(settings, "mail.normal")["pause-time-left"] <= 300
    with connect(settings.beanstalk_url, encoding=None, watch="mail.normal") as c:  # a worker gets nothing
        import greenstalk
        with pytest.raises(greenstalk.TimedOutError):
            c.reserve(timeout=0)
    status, _, page = console.get("/")
    assert 'id="resume-mail.normal"' in page
    status, headers, _ = console.post("/tube/resume", {"tube": "mail.normal", "csrf": token}, Cookie=cookie)
    assert status == 303 and flash_of(console, headers["location"]) == "resumed tube mail.normal: 1 tube"
    assert tube_stats(settings, "mail.normal")["pause"] == 0


def test_a_host_disabled_and_enabled_from_the_page_and_the_registry_pruned(settings: Settings,
                                                                           console: Console) -> None:
    store = Store(settings.store)
    stopped: list[str] = []
    reg = registry.Registry(store, ("mail.normal",), heartbeat=3600, lost_after=60,
                            stop=lambda: stopped.append("stop")).start()
    # a stopped worker's row from two days ago, and one from an hour ago
    for wid, seen in (("old:1:x", time.time() - 2 * 86400), ("recent:2:y", time.time() - 3600)):
        store.execute("INSERT INTO workers (id, host, pid, tubes, version, state, started_at, last_seen, jobs_done,"
                      " current_job) VALUES (?, ?, ?, 'mail.normal', '0', 'stopped', ?, ?, 0, '')",
                      (wid, wid.split(":")[0], int(wid.split(":")[1]), seen, seen))
    try:
        cookie, token = csrf_of(console, "/")
        page = console.get("/")[2]
        assert f'id="disable-{reg.host}"' in page
        assert console.get("/host/disable?target=" + reg.host)[0] == 405
        assert console.post("/host/disable", {"target": reg.host}, Cookie=cookie)[0] == 403
        assert console.post("/host/disable", {"target": "a b", "csrf": token}, Cookie=cookie)[0] == 400
        assert console.post("/host/disable", {"target": "h" * 5000, "csrf": token}, Cookie=cookie)[0] == 400
        assert registry.disabled_targets(store) == []
        status, headers, _ = console.post("/host/disable", {"target": reg.host, "csrf": token}, Cookie=cookie)
        assert status == 303
        assert flash_of(console, headers["location"]) == (f"disabled {reg.host}: 1 running worker(s) will finish the"
                                                         " job in hand and exit")
        reg.beat()  # the worker's next heartbeat sees it
        assert stopped == ["stop"]
        reg.close()
        states = {w.id: w.state for w in registry.workers(store, 60)}  # the workers' beat prunes too
        assert states == {reg.id: "disabled", "recent:2:y": "stopped"}  # the two-day-old row is gone
        page = console.get("/")[2]
        assert f'id="enable-{reg.host}"' in page
        status, headers, _ = console.post("/host/enable", {"target": reg.host, "csrf": token}, Cookie=cookie)
        assert status == 303 and flash_of(console, headers["location"]) == f"enabled {reg.host}"
        assert registry.disabled_targets(store) == []
        assert {w.id: w.state for w in registry.workers(store, 60)}[reg.id] == "stopped"  # no longer "disabled"
        metrics = console.get("/metrics")[2]
        assert re.search(r'beanmail_registered_workers\{state="disabled"\} 0', metrics), metrics[:2000]
        assert console.post("/host/enable", {"target": reg.host, "csrf": token}, Cookie=cookie)[1]["location"] \
            .endswith("was+not+disabled%3B+nothing+changed")
    finally:
        store.close()


def test_enable_clears_disabled_rows_and_old_rows_are_pruned_on_both_store_backends(store_location: str) -> None:
    store = Store(store_location)
    now = time.time()
    rows = [("h1:10:a", "h1", 10, "disabled", now), ("h1:11:b", "h1", 11, "running", now),
            ("h2:12:c", "h2", 12, "disabled", now), ("h3:13:d", "h3", 13, "stopped", now - 2 * 86400),
            ("h3:14:e", "h3", 14, "lost", now - 2 * 86400), ("h3:15:f", "h3", 15, "disabled", now - 2 * 86400)]
    for wid, host, pid, state, seen in rows:
        store.execute("INSERT INTO workers (id, host, pid, tubes, version, state, started_at, last_seen, jobs_done,"
                      " current_job) VALUES (?, ?, ?, 'mail.normal', '0', ?, ?, ?, 0, '')",
                      (wid, host, pid, state, seen, seen))
    registry.disable(store, "h1")
    registry.disable(store, "h2:12")
    assert registry.enable(store, "h1") and registry.enable(store, "h2:12")
    states = {w.id: w.state for w in registry.workers(store, 3 * 86400)}
    # enabled rows no longer say disabled; a day-old stopped or lost row is gone, a disabled one stays
    assert states == {"h1:10:a": "stopped", "h1:11:b": "running", "h2:12:c": "stopped", "h3:15:f": "disabled"}
    assert registry.disabled_targets(store) == []
    store.close()


# -- buried jobs by filter ------------------------------------------------------------------------

def test_buried_jobs_kicked_and_deleted_by_template_domain_and_reason(settings: Settings, console: Console) -> None:
    ids = {
        "w-ex-451": bury_by_hand(settings, job_body("welcome", "a@example.com", "f:1"),
                                 reason="exhausted after 3 attempts: 451 4.3.0 try later"),
        "w-ex-451b": bury_by_hand(settings, job_body("welcome", "b@Example.COM", "f:2"),
                                  reason="exhausted after 3 attempts: 451 4.7.1 greylisted"),
        "w-ex-poison": bury_by_hand(settings, job_body("welcome", "c@example.com", "f:3"),
                                    reason="poison: template error"),
        "w-other-451": bury_by_hand(settings, job_body("welcome", "d@other.org", "f:4"),
                                    reason="exhausted after 3 attempts: 451 4.3.0 try later"),
        "reset-ex-451": bury_by_hand(settings, job_body("password_reset", "e@example.com", "f:5"), "mail.urgent",
                                     reason="exhausted after 3 attempts: 451 4.3.0 try later"),
    }
    query = {"template": "welcome", "domain": "example.com", "reason": "451"}
    status, _, page = console.get("/buried?" + urlencode(query))
    assert status == 200
    assert re.search(r'id="matching"><b>2</b> buried job\(s\) match template=welcome, domain=example.com, reason=451',
                     page)
    assert set(re.findall(r'<tr data-job="(\d+)">', page)) == {str(ids["w-ex-451"]), str(ids["w-ex-451b"])}
    cookie, token = csrf_of(console)
    # not without the token, not by GET, not with a huge filter; an empty filter is no filter
    assert console.post("/buried/kick", {"filter": "1", **query}, Cookie=cookie)[0] == 403
    assert console.get("/buried/kick?" + urlencode({"filter": "1", **query}))[0] == 405
    assert console.post("/buried/kick", {"filter": "1", "csrf": token, **query, "reason": "4" * 5000},
                        Cookie=cookie)[0] == 400
    assert console.get("/buried?" + urlencode({**query, "reason": "4" * 5000}))[0] == 400
    assert console.post("/buried/delete", {"filter": "1", "csrf": token}, Cookie=cookie)[0] == 400
    assert all(job_state(settings, j) == "buried" for j in ids.values())

    status, headers, _ = console.post("/buried/kick", {"filter": "1", "csrf": token, "expected": "2", **query},
                                      Cookie=cookie)
    assert status == 303
    assert flash_of(console, headers["location"]) == ("kicked 2 buried job(s) of 2 matching template=welcome,"
                                                     " domain=example.com, reason=451")
    assert {k: job_state(settings, j) for k, j in ids.items()} == {
        "w-ex-451": "ready", "w-ex-451b": "ready", "w-ex-poison": "buried", "w-other-451": "buried",
        "reset-ex-451": "buried"}
    status, headers, _ = console.post("/buried/delete", {"filter": "1", "csrf": token, "domain": "@Other.org",
                                                         "expected": "3"}, Cookie=cookie)
    assert flash_of(console, headers["location"]) == ("deleted 1 buried job(s) of 1 matching domain=other.org;"
                                                     " 3 were shown when you confirmed")
    assert job_state(settings, ids["w-other-451"]) is None
    status, headers, _ = console.post("/buried/delete", {"filter": "1", "csrf": token, "template": "password_reset",
                                                         "tube": "mail.urgent"}, Cookie=cookie)
    assert job_state(settings, ids["reset-ex-451"]) is None and job_state(settings, ids["w-ex-poison"]) == "buried"


# -- a mailout, and the log by key prefix ---------------------------------------------------------

def test_a_mailouts_progress_by_key_and_its_deliveries_by_key_prefix(settings: Settings, notifier: Notifier,
                                                                     smtp: SmtpServer, console: Console) -> None:
    people = ["ann@example.com", "bob@example.com", "reject@example.com", "tempfail@example.com"]
    notifier.mailout("welcome", people, {"name": "you"}, key="news:7")
    status, _, page = console.get("/mailout?key=news:7")
    figures = dict(re.findall(r'<b id="(\w+)">(\d+)</b>', page))
    assert figures == {"sent": "0", "bounced": "0", "left": "4", "buried": "0", "other": "0", "total": "4"}
    store = Store(settings.store)
    Worker(settings, Fanout(settings), store, tubes=("mailout",)).run(burst=True)
    store.close()
    run_burst(settings.replace(backoff_base=600, backoff_max=1200))
    smtp.wait_for(1)
    status, _, page = console.get("/mailout?key=news:7")
    figures = dict(re.findall(r'<b id="(\w+)">(\d+)</b>', page))
    assert figures == {"sent": "2", "bounced": "1", "left": "1", "buried": "0", "other": "0", "total": "4"}
    assert 'id="progress-bar"' in page
    assert "nothing known" in console.get("/mailout?key=news:")[2]  # a key, not a prefix of one
    status, _, page = console.get("/log?q=news:7:")
    assert status == 200 and "by keys starting" in page
    keys = re.findall(r"<td>(news:7:[^<]*)</td>", page)
    assert sorted(keys) == sorted(f"news:7:{p[0]}***@example.com" for p in people)
    assert "<td>welcome</td>" in page
    assert console.get("/mailout?key=" + "k" * 5000)[0] == 400


def test_scheduled_mailouts_are_listed_and_cancelled_from_the_page(settings: Settings, console: Console) -> None:
    """A mailout for next week shows with its recipients and due time; cancel is a CSRF-guarded
    POST, and a cancelled one is no longer listed (and never goes)."""
    notifier = Notifier(settings.beanstalk_url, blobs=settings.store)
    notifier.mailout("welcome", ["ann@example.com", "bob@example.com"], {"name": "you"}, key="news:<b>8</b>",
                     send_at=time.time() + 7 * 86400)
    status, _, page = console.get("/mailout")
    assert status == 200 and 'id="scheduled"' in page and "news:&lt;b&gt;8&lt;/b&gt;" in page
    assert re.search(r"<td class=\"n\">2</td>", page)
    cookie, token = csrf_of(console, "/mailout")
    assert console.post("/mailout/cancel", {"key": "news:<b>8</b>"}, Cookie=cookie)[0] == 403
    assert console.get("/mailout/cancel?key=news")[0] == 405
    status, headers, _ = console.post("/mailout/cancel", {"key": "news:<b>8</b>", "csrf": token}, Cookie=cookie)
    assert status == 303 and flash_of(console, headers["location"]) == \
        "cancelled news:&lt;b&gt;8&lt;/b&gt;: 2 of 2 recipient(s) will not get it"  # the key shown as text
    assert 'id="none-scheduled"' in console.get("/mailout")[2]
    status, headers, _ = console.post("/mailout/cancel", {"key": "news:<b>8</b>", "csrf": token}, Cookie=cookie)
    assert "not cancelled" in flash_of(console, headers["location"])
    long_key = "k" * 2000  # as long as a producer may make one: listed, and cancelled from the page
    notifier.mailout("welcome", ["ann@example.com"], {"name": "you"}, key=long_key, send_at=time.time() + 86400)
    status, headers, _ = console.post("/mailout/cancel", {"key": long_key, "csrf": token}, Cookie=cookie)
    assert status == 303 and "1 of 1 recipient(s) will not get it" in flash_of(console, headers["location"])
    with pytest.raises(ValueError, match="a mailout needs a key"):
        notifier.mailout("welcome", ["ann@example.com"], {"name": "you"}, key=" ", send_at=time.time() + 86400)


def test_the_overview_shows_each_relay_as_the_workers_last_saw_it(settings: Settings, notifier: Notifier,
                                                                 smtp: SmtpServer, tmp_path: Path) -> None:
    """Two relays for normal mail, the first refusing connections: after a worker sent through
    them, the console's relay table says the first is skipped (and why) and the second up."""
    from .servers import free_port

    dead = f"smtp://127.0.0.1:{free_port()}?starttls=off"
    relayed = settings.replace(smtp_url=f"{dead},{smtp.url}")
    console = start_console(relayed)
    try:
        notifier.notify("welcome", "ann@example.com", {"name": "A"}, key="relay:1")
        run_burst(relayed)
        smtp.wait_for(1)
        status, _, page = console.get("/")
        assert status == 200 and 'id="relays"' in page
        rows = dict(re.findall(r'<tr data-relay="([^"]+)">(.*?)</tr>', page, re.S))
        [first] = [row for name, row in rows.items() if dead.split("?")[0].split("//")[1] in name]
        [second] = [row for name, row in rows.items() if f":{smtp.port}" in name]
        assert "skipped for" in first and ("refused" in first.lower() or "connect" in first.lower()), first
        assert '"ok">up<' in second
    finally:
        stop_console(console)


def test_the_log_is_labelled_by_template_and_the_subject_the_worker_sent(settings: Settings, notifier: Notifier,
                                                                          smtp: SmtpServer, console: Console) -> None:
    notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, key="subj:welcome")
    notifier.send_raw(b"From: app@example.com\r\nTo: ann@example.com\r\nSubject: =?utf-8?q?Facture_n=C2=BA?= 7\r\n"
                      b" <script>alert(1)</script>\r\n\r\nHello\r\n", ["ann@example.com"], key="django:<2@app>")
    run_burst(settings)
    smtp.wait_for(2)
    status, _, page = console.get("/log?q=subj:welcome")
    [subject] = re.findall(r'<td class="subject">(.*?)</td>', page)
    assert status == 200 and "<td>welcome</td>" in page
    assert subject == "Welcome to beanmail, Zoë!"  # the template's subject.txt, as rendered and sent
    status, _, page = console.get("/log?q=django:")  # Django's mail, by the start of its keys
    row = re.search(r"<td>django:&lt;2\*\*\*@app&gt;</td><td>a\*\*\*@example.com</td><td>\(raw message\)</td>"
                    r'<td class="subject">(.*?)</td>', page)
    assert row and row.group(1) == "Facture nº 7 &lt;script&gt;alert(1)&lt;/script&gt;", page[-2000:]


def test_subjects_go_to_the_store_in_the_tallys_write_on_both_store_backends(store_location: str) -> None:
    from worker.web import subjects
    from worker.web.tally import Tally

    tally = Tally(store_location, interval=3600)
    for i in range(700):  # more rows than one statement carries
        tally.record("mail.bulk", "sent", 0.1, "example.com", subject=(f"m:{i}", f"Issue #{i}"))
    tally.record("mail.normal", "sent", subject=("raw:1", "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from\x00 us"))
    tally.record("mail.normal", "sent", subject=("m:1", "Issue #1 (again)"))  # a key sent again: its newest
    tally.record("mail.normal", "deferred", subject=("m:none", ""))  # no subject: nothing recorded
    tally.record("mail.normal", "poison", subject=("bad\x00key", "x"))  # a key no store holds: left out alone
    store = Store(store_location)
    tally.flush(store)
    found = subjects.subjects_for(store, [f"m:{i}" for i in range(700)] + ["raw:1", "m:none", "nope"])
    assert len(found) == 701 and found["m:699"] == "Issue #699" and found["m:1"] == "Issue #1 (again)"
    assert found["raw:1"] == "Grüße from\ufffd us"
    assert "m:none" not in found
    assert subjects.header_subject(b"From: a@b\r\nSubject: one\r\n two\r\n\r\nSubject: body") == "one two"
    assert subjects.header_subject(b"From: a@b\n\nSubject: in the body") == ""
    store.close()


# -- events and replies ---------------------------------------------------------------------------

def test_events_pending_retried_and_failed_and_the_replies_page(events_settings: Settings, endpoint: Endpoint,
                                                                console: Console) -> None:
    settings = events_settings
    emit(settings, Event(SENT, "ev:1", "ann@example.com", "welcome"), Event(SENT, "ev:2", "bob@example.com", "welcome"))
    status, _, page = console.get("/events")
    assert status == 200 and "pending</b> (2)" in page
    assert set(re.findall(r"<td>(ev:\d)</td>", page)) == {"ev:1", "ev:2"}
    assert "a***@example.com" in page and "message.sent" in page
    runner = Runner(settings)  # the endpoint answers 503: both retried later
    assert runner.run(burst=True) == 0
    runner.close()
    page = console.get("/events?view=retried")[2]
    assert "retried</b> (2)" in page and "pending</a> (0)" in page
    rows = re.findall(r'<tr data-job="\d+">(.*?)</tr>', page, re.S)
    assert len(rows) == 2 and all(re.search(r"<td class=\"n\">1</td><td>[\d-]+ [\d:]+ \(in \d+ s\)</td>", r)
                                  for r in rows)
    # one refused for good (a 4xx): buried with its reason
    endpoint.answer = lambda n: 410
    emit(settings, Event(FAILED, "ev:3", "cy@example.com", "welcome", details={"reason": "poison"}))
    runner = Runner(settings)
    assert runner.run(burst=True) == 0
    runner.close()
    page = console.get("/events?view=failed")[2]
    assert "failed</b> (1)" in page and "<td>ev:3</td>" in page and "endpoint refused message.failed" in page
    assert "HTTP 410" in page

    store = Store(settings.store)
    raw = (b"From: Zed <zed@example.com>\r\nTo: reply+nothing@replies.example.org\r\nSubject: Out of Office\r\n"
           b"Auto-Submitted: auto-replied\r\n\r\nAway.\r\n")
    assert handle(settings, store, raw).outcome == "refused"
    store.record_inbound(outcome="replied", key="k:9", address="amy@example.com", reason="")
    store.close()
    page = console.get("/replies")[2]
    assert "z***@example.com" in page and "refused" in page and "k:9" in page and "replied" in page
    refused = console.get("/replies?outcome=refused")[2]
    assert "k:9" not in refused and "z***@example.com" in refused


# -- live refresh ---------------------------------------------------------------------------------

def test_the_refresh_interval_is_the_operators_and_a_reload_repeats_the_page_not_the_action(
        console: Console) -> None:
    page = console.get("/deferred?refresh=10")[2]
    assert '<meta http-equiv="refresh" content="10; url=/deferred?refresh=10">' in page
    assert 'href="/buried?refresh=10"' in page  # the interval follows the links
    page = console.get("/buried?done=kicked+job+3&tube=mail.bulk&refresh=5")[2]
    assert '<meta http-equiv="refresh" content="5; url=/buried?tube=mail.bulk&amp;refresh=5">' in page
    for bad in ("7", "-1", "9" * 50, "abc"):
        assert 'http-equiv="refresh"' not in console.get("/?refresh=" + bad)[2]


def test_in_chromium_a_page_set_to_refresh_shows_new_buried_jobs_by_itself_and_kicks_by_filter(
        settings: Settings, console: Console, browser: object) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console.url + "/buried")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "refresh-5").click()  # type: ignore[attr-defined]
    wait_until(lambda: "refresh=5" in browser.current_url, 10, "the page with its interval")  # type: ignore[attr-defined]
    job = bury_by_hand(settings, job_body("welcome", "kim@example.com", "r:1"), reason="exhausted: 451 later")
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job}"]'), 20,  # type: ignore[attr-defined]
               "the page to reload by itself")
    browser.get(console.url + "/buried?" + urlencode({"domain": "example.com", "reason": "451"}))  # type: ignore[attr-defined]
    assert browser.find_element(By.ID, "matching").text.startswith("1 buried job(s) match")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "kick-matching").click()  # type: ignore[attr-defined]
    flash = wait_until(lambda: browser.find_elements(By.ID, "flash"), 10, "the page after the kick")  # type: ignore[attr-defined]
    assert flash[0].text == "kicked 1 buried job(s) of 1 matching domain=example.com, reason=451"  # type: ignore[index]
    assert job_state(settings, job) == "ready"


# -- attacks on these pages -----------------------------------------------------------------------

def test_markup_in_a_template_name_key_reason_or_filter_is_shown_as_text_and_nothing_answers_500(
        events_settings: Settings) -> None:
    settings = events_settings
    console = start_console(settings, BEANMAIL_EVENTS_URL=settings.events_url, BEANMAIL_EVENTS_SECRET=SECRET)
    try:
        attack(settings, console)
    finally:
        console.proc.terminate()
        log = console.proc.communicate(timeout=10)[0]
    assert "console page failed" not in log and "Traceback" not in log, log[-3000:]


def attack(settings: Settings, console: Console) -> None:
    key = "k" + HOSTILE
    bury_by_hand(settings, job_body("t" + HOSTILE.replace('"', ""), "x@example.com", key.replace('"', "")),
                 reason="poison: " + HOSTILE)
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use("mail.normal")
        c.put(job_body(HOSTILE.replace('"', ""), "y@example.com", key.replace('"', "")), delay=600)
    emit(settings, Event(SENT, key, "z@example.com", HOSTILE))
    store = Store(settings.store)
    store.finish(key.replace('"', ""), "x@example.com", HOSTILE, "deferred", HOSTILE)
    store.record_inbound(outcome="refused", reason=HOSTILE, key=key, address="q@example.com")
    store.close()
    hostile_q = urlencode({"q": HOSTILE})
    pages = ["/", "/deferred", "/buried", "/buried?" + urlencode({"template": HOSTILE, "reason": HOSTILE}),
             "/events", "/events?view=" + quote(HOSTILE), "/events?view=retried", "/events?view=failed", "/replies",
             "/replies?outcome=" + quote(HOSTILE), "/log", "/log?" + hostile_q, "/mailout?" + urlencode({"key": key}),
             "/mailout?key=%00%ff", "/deferred?refresh=" + quote(HOSTILE), "/?" + urlencode({"refresh": "5", "x": HOSTILE}),
             "/buried?" + urlencode({"domain": "\x00" * 10, "tube": HOSTILE})]
    for path in pages:
        status, _, page = console.get(path)
        assert status in (200, 400), (path, status, page[:300])
        assert "<script>alert" not in page and "<img src=x" not in page, path
    page = console.get("/deferred")[2]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    cookie, token = csrf_of(console)
    for path, form in [("/buried/kick", {"filter": "1", "template": HOSTILE}), ("/buried/delete", {"filter": "1",
                       "reason": "\x00" + HOSTILE}), ("/tube/pause", {"tube": HOSTILE, "seconds": "300"}),
                       ("/tube/resume", {"tube": ""}), ("/host/enable", {"target": HOSTILE}),
                       ("/host/disable", {"target": "x\x00y"}), ("/tube/pause", {})]:
        status, headers, page = console.post(path, {"csrf": token, **form}, Cookie=cookie)
        assert status in (303, 400), (path, form, status, page[:300])
        if status == 303:
            assert "<script>" not in console.get(headers["location"])[2]


def test_with_beanstalkd_down_the_new_pages_say_so_and_the_actions_change_nothing(
        settings: Settings, beanstalkd: Beanstalkd, console: Console) -> None:
    bury_by_hand(settings, job_body("welcome", "a@example.com", "down:1"), reason="exhausted: 451")
    cookie, token = csrf_of(console, "/")
    beanstalkd.stop()
    for path in ("/deferred", "/events", "/events?view=retried", "/events?view=failed", "/mailout?key=down",
                 "/buried?domain=example.com", "/"):
        status, _, page = console.get(path)
        assert status == 200 and "unreachable" in page, (path, status, page[:300])
    for path, form in (("/tube/pause", {"tube": "mail.normal", "seconds": "300"}), ("/tube/resume", {"tube": "x"}),
                       ("/buried/kick", {"filter": "1", "domain": "example.com"}),
                       ("/buried/delete", {"filter": "1", "reason": "451"})):
        status, headers, _ = console.post(path, {"csrf": token, **form}, Cookie=cookie)
        assert status == 303, (path, status)
        assert "unreachable" in flash_of(console, headers["location"]), path


def test_a_scan_past_its_budget_says_so_and_still_finds_each_tubes_next_job(settings: Settings) -> None:
    from worker.web.jobscan import scan

    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use("mail.normal")
        old = [c.put(b"{}", delay=d) for d in (900, 300, 600)]  # the oldest ids, 300 s the soonest
        for _ in range(60):
            c.put(b"{}")
    found = scan(settings, ["mail.normal"], {"delayed"}, budget=40)
    assert (found.wanted, found.complete, [j.id for j in found.jobs]) == (3, False, [old[1]])
    assert found.lowest == found.top - 40 and 290 <= found.jobs[0].time_left <= 300
    whole = scan(settings, ["mail.normal"], {"delayed"})
    assert whole.complete and sorted(j.id for j in whole.jobs) == sorted(old)


# -- the pictures in docs/console.md --------------------------------------------------------------

def test_screenshots_of_the_new_pages(events_settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                      console: Console, browser: object, tmp_path: Path) -> None:
    """Taken in the tests' Chromium; BEANMAIL_SCREENSHOTS=docs writes them to docs/console-*.png."""
    for i in range(3):
        notifier.notify("welcome", f"tempfail{i}@example.com", {"name": "T"}, key=f"shot:tempfail{i}")
    notifier.mailout("welcome", ["ann@example.com", "bob@example.com", "reject@example.com", "tempfail@example.net"],
                     {"name": "you"}, key="newsletter:2026-12")
    settings = events_settings  # the sends queue message.sent events
    store = Store(settings.store)
    Worker(settings, Fanout(settings), store, tubes=("mailout",)).run(burst=True)
    store.close()
    run_burst(settings.replace(backoff_base=600, backoff_max=1200))
    ops.pause(settings, "mail.bulk", 3600)
    store = Store(settings.store)
    worker_row = registry.Registry(store, ("mail.normal", "mail.bulk"), heartbeat=3600, lost_after=60).start()
    registry.disable(store, "mail-2.example.net")  # a host taken out of the pool
    bury_by_hand(settings, job_body("welcome", "d@example.org", "shot:b1"), reason="exhausted after 3 attempts: 451 4.3.0")
    bury_by_hand(settings, job_body("password_reset", "e@example.org", "shot:b2"), reason="poison: no such template")
    out = Path(os.environ.get("BEANMAIL_SCREENSHOTS") == "docs" and ROOT / "docs" or tmp_path)
    try:
        for name, path in (("overview-actions", "/?refresh=30"), ("deferred", "/deferred"), ("buried-filter", "/buried?domain=example.org&reason=451"),
                           ("mailout", "/mailout?key=newsletter:2026-12"), ("events", "/events")):
            browser.get(console.url + path)  # type: ignore[attr-defined]
            browser.set_window_size(1200, 860 if name == "overview-actions" else 620)  # type: ignore[attr-defined]
            if name == "overview-actions":  # the tubes, the registry and the hosts, below the header
                browser.execute_script("document.getElementById('tubes').scrollIntoView()")  # type: ignore[attr-defined]
            target = out / f"console-{name}.png"
            assert browser.get_screenshot_as_file(str(target))  # type: ignore[attr-defined]
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if shutil.which("optipng") and out != tmp_path:
                __import__("subprocess").run(["optipng", "-quiet", "-o2", str(target)], check=False)
    finally:
        browser.set_window_size(1280, 1100)  # type: ignore[attr-defined]
        worker_row.close()
        store.close()
