"""Mailouts: fan-out, exactly once, suppression, one-click unsubscribe, priority under a backlog."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from producer import Notifier
from producer.client import connect
from producer.unsubscribe import UnsubscribeApp, make_token
from worker.fanout import Fanout
from worker.loop import Worker
from worker.settings import Settings
from worker.store import Store

from .conftest import VENV_BIN, bare_env, beanmail, run_burst, running_worker
from .servers import SmtpServer, wait_until


def run_fanout(settings: Settings) -> None:
    store = Store(settings.store)
    assert Worker(settings, Fanout(settings), store, tubes=("mailout",)).run(burst=True) == 0


def recipients(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(n)]


def counts(smtp: SmtpServer) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in smtp.messages)


def tube_total(settings: Settings, tube: str) -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return int(c.stats_tube(tube)["total-jobs"]) if tube in c.tubes() else 0


def test_a_mailout_reaches_each_recipient_once_and_running_it_again_sends_none(
        settings: Settings, notifier: Notifier, smtp: SmtpServer, store_location: str) -> None:
    settings = settings.replace(store=store_location)
    everyone = recipients(2000)
    chunks = notifier.mailout("welcome", ({"address": a, "context": {"name": f"#{i}"}} for i, a in enumerate(everyone)),
                              {"site": "Acme"}, key="news:2026-11", exclude=["Boss <r7@example.com>"])
    assert len(chunks) >= 2  # more than one job's worth of recipients
    run_fanout(settings)
    assert tube_total(settings, "mail.bulk") == 1999
    run_burst(settings)
    got = counts(smtp)
    assert set(got) == set(everyone) - {"r7@example.com"} and set(got.values()) == {1}
    first = {m.rcpt_tos[0]: m.message for m in smtp.messages}["r42@example.com"]
    assert first["Subject"] == "Welcome to Acme, #42!"  # the recipient's own context over the mailout's
    assert first["Precedence"] == "bulk" and first["List-Id"] == "<welcome.beanmail.example>"

    notifier.mailout("welcome", everyone, {"site": "Acme", "name": "x"}, key="news:2026-11", exclude=["r7@example.com"])
    run_fanout(settings)
    run_burst(settings)
    assert sum(counts(smtp).values()) == 1999  # the same mailout again delivers nothing new
    assert Store(store_location).outcome_counts() == {"sent": 1999}


def test_a_fanout_killed_mid_chunk_and_restarted_still_delivers_once(settings: Settings, notifier: Notifier,
                                                                      smtp: SmtpServer) -> None:
    n = 5000
    notifier.mailout("welcome", recipients(n), {"name": "x"}, key="killed")
    proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "fanout"], env=bare_env(settings),
                            stdout=subprocess.DEVNULL)

    def freeze_holding_a_chunk(timeout: float = 20) -> int:
        """Freeze the fan-out while it holds a chunk and has queued part of the mailout. Polled on
        one connection without backing off: the window is a fraction of a second on a fast machine."""
        deadline = time.monotonic() + timeout
        with connect(settings.beanstalk_url, encoding=None) as c:
            def bulk() -> int:
                return int(c.stats_tube("mail.bulk")["total-jobs"]) if "mail.bulk" in c.tubes() else 0
            while time.monotonic() < deadline and proc.poll() is None:
                if 0 < bulk() < n:
                    proc.send_signal(signal.SIGSTOP)
                    if int(c.stats_tube("mailout")["current-jobs-reserved"]) == 1:
                        return bulk()
                    proc.send_signal(signal.SIGCONT)
                time.sleep(0.001)
        raise TimeoutError(f"the fan-out was never caught holding a chunk (bulk jobs: {bulk()} of {n})")
    try:
        queued = freeze_holding_a_chunk()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()

    def chunk_released() -> bool:
        """beanstalkd returns a dead client's reservation when it reads the closed connection:
        not at once, so a restart straight after the kill could find the chunk still reserved."""
        with connect(settings.beanstalk_url, encoding=None) as c:
            return int(c.stats_tube("mailout")["current-jobs-reserved"]) == 0
    wait_until(chunk_released, 10, "the killed fan-out's chunk back in its tube")
    run_fanout(settings)  # restarted: the chunk it held is back in the tube and runs again
    fanned = tube_total(settings, "mail.bulk")
    run_burst(settings)
    got = counts(smtp)
    print(f"MAILOUT kill: recipients={n} queued_before_kill={queued} bulk_jobs={fanned} "
          f"delivered={sum(got.values())} duplicates={sum(got.values()) - len(got)}")
    assert fanned >= n  # nothing lost of the chunk in hand ...
    assert set(got) == set(recipients(n)) and set(got.values()) == {1}  # ... and nobody got it twice


def test_suppressed_and_expired_recipients_get_nothing(settings: Settings, notifier: Notifier,
                                                       smtp: SmtpServer) -> None:
    store = Store(settings.store)
    store.suppress("r3@example.com", "550 5.1.1", "bounce")
    beanmail("suppress", "add", "R4@example.com", env=bare_env(settings))
    notifier.mailout("welcome", recipients(10), {"name": "x"}, key="m1")
    notifier.mailout("welcome", recipients(5, "late"), {"name": "x"}, key="m2", not_after=time.time() - 1)
    notifier.mailout("welcome", recipients(2, "soon"), {"name": "x"}, key="m3", not_after=time.time() + 3600)
    run_fanout(settings)
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.watch("mail.bulk")
        jobs = [c.reserve(0) for _ in range(12)]  # the late mailout's chunk was skipped whole
        bodies = {json.loads(j.body)["to"]["address"]: json.loads(j.body) for j in jobs}
        assert bodies["soon0@example.com"]["not_after"] > time.time()  # a mailout's expiry is every recipient's
        for j in jobs:
            c.release(j)
    run_burst(settings)
    assert set(counts(smtp)) == set(recipients(10)) - {"r3@example.com", "r4@example.com"} | set(recipients(2, "soon"))
    log = beanmail("log", "--to", "r4@example.com", env=bare_env(settings)).stdout
    assert "skipped" in log and "suppressed (operator)" in log
    listed = json.loads(beanmail("suppress", "list", "--json", env=bare_env(settings)).stdout)
    assert {r["address"] for r in listed} == {"r3@example.com", "r4@example.com"}


def test_an_urgent_job_behind_a_bulk_backlog_goes_next(settings: Settings, notifier: Notifier,
                                                       smtp: SmtpServer) -> None:
    backlog = 3000
    notifier.mailout("welcome", recipients(backlog), {"name": "x"}, key="backlog")
    run_fanout(settings)
    with running_worker(settings):
        wait_until(lambda: len(smtp.messages) >= 100, 30, "the backlog to be draining")
        before = len(smtp.messages)
        notifier.notify("password_reset", "urgent@example.com", {"reset_url": "https://x.example/r"},
                        priority="urgent")
        wait_until(lambda: "urgent@example.com" in counts(smtp), 30, "the urgent mail")
        position = [m.rcpt_tos[0] for m in smtp.messages].index("urgent@example.com") - before + 1
    print(f"MAILOUT urgent: backlog={backlog} delivered_before_enqueue={before} urgent_position_after_enqueue={position}")
    assert position <= settings.batch + 2  # the batch in hand (at most BEANMAIL_BATCH jobs), then the urgent one


@pytest.fixture
def unsubscribe_server(settings: Settings) -> Iterator[tuple[str, Store]]:
    store = Store(settings.store)
    app = UnsubscribeApp("tok-secret", lambda a, l: store.suppress(a, f"unsubscribed from {l}", "unsubscribe"))

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/unsubscribe", store
    server.shutdown()
    server.server_close()


def post(url: str, data: bytes = b"List-Unsubscribe=One-Click") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_one_click_unsubscribe_from_a_bulk_mail(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                                unsubscribe_server: tuple[str, Store]) -> None:
    url, store = unsubscribe_server
    settings = settings.replace(unsubscribe_url=url, unsubscribe_secret="tok-secret",
                                unsubscribe_mailto="unsubscribe@beanmail.example")
    notifier.mailout("welcome", ["zoe@example.com"], {"name": "Zoë"}, key="digest:1")
    run_fanout(settings)
    run_burst(settings)
    msg = smtp.wait_for(1)[0].message
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    assert mailto.startswith("mailto:unsubscribe@beanmail.example?subject=unsubscribe%20")
    with urllib.request.urlopen(https, timeout=10) as resp:  # a link scanner's GET ...
        assert resp.status == 200 and "<form" in resp.read().decode()
    assert store.suppressed("zoe@example.com") is None  # ... unsubscribes nobody
    assert post(https) == (200, post(https)[1]) and "zoe@example.com is unsubscribed" in post(https)[1]
    assert store.suppressed("zoe@example.com")[0] == "unsubscribe"

    notifier.mailout("welcome", ["zoe@example.com"], {"name": "Zoë"}, key="digest:2")
    notifier.notify("password_reset", "zoe@example.com", {"reset_url": "https://x.example/r"}, priority="urgent")
    run_fanout(settings)
    run_burst(settings)
    subjects = [m.message["Subject"] for m in smtp.messages]
    assert subjects == ["Welcome to beanmail, Zoë!", "Reset your password"]  # the reset still arrives


def test_the_unsubscribe_app_rejects_forged_and_expired_tokens(unsubscribe_server: tuple[str, Store]) -> None:
    url, store = unsubscribe_server
    forged = make_token("zoe@example.com", "not-the-secret")
    expired = make_token("zoe@example.com", "tok-secret", ttl=-1)
    for token, reason in ((forged, "bad signature"), (expired, "expired"), ("garbage", "malformed")):
        status, body = post(f"{url}?token={urllib.parse.quote(token)}")
        assert status == 400 and reason in body
    assert store.suppression_list() == []
    good = make_token("zoe@example.com", "tok-secret", list_id="<news.example>")
    assert post(url, f"token={good}".encode())[0] == 200  # the confirmation form's POST
    assert store.suppressed("zoe@example.com") == ("unsubscribe", "unsubscribed from <news.example>")


def test_watchers_minus_the_actor(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    watchers = ["Ann <ann@example.com>", "bob@example.com", "Cat <cat@example.com>"]
    notifier.notify_watchers("comment", watchers, actor="Bob <BOB@example.com>", key="comment:9",
                             context={"issue": {"id": 3, "title": "Crash"},
                                      "comment": {"author": "Bob", "body": "<b>fixed</b>"}})
    run_fanout(settings)
    run_burst(settings)
    msgs = {m.rcpt_tos[0]: m.message for m in smtp.wait_for(2)}
    assert set(msgs) == {"ann@example.com", "cat@example.com"}
    assert msgs["ann@example.com"]["Subject"] == "[#3] Crash: new comment by Bob"
    assert msgs["ann@example.com"]["To"].addresses[0].display_name == "Ann"
    assert "&lt;b&gt;fixed&lt;/b&gt;" in msgs["ann@example.com"].get_body(("html",)).get_content()
    assert msgs["ann@example.com"]["Precedence"] is None  # a notification is not bulk mail
