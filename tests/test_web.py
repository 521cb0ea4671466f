"""The operator console (`beanmail web`) against the real stack: the real command serving real
beanstalkd and the real store, real workers delivering to a real SMTP server, and a real headless
Chromium (Debian's chromium + chromium-driver, driven by selenium) for the pages a person uses."""

from __future__ import annotations

import base64
import http.client
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer import Notifier
from producer.client import connect
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, VENV_BIN, bare_env, beanmail, job_state, run_burst, running_worker
from .servers import Beanstalkd, SmtpServer, free_port, port_open, wait_until


@dataclass
class Console:
    url: str
    port: int
    proc: subprocess.Popen[str]

    def request(self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode("utf-8")
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, urlencode(form),
                            {"Content-Type": "application/x-www-form-urlencoded", **headers})


def start_console(settings: Settings, **extra: str) -> Console:
    port = free_port()
    env = bare_env(settings, BEANMAIL_TEMPLATES=str(ROOT / "templates"), **extra)
    proc = subprocess.Popen([str(VENV_BIN / "beanmail"), "web", "--listen", f"127.0.0.1:{port}"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 15, "the console to listen")
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    return Console(f"http://127.0.0.1:{port}", port, proc)


def stop_console(console: Console) -> None:
    console.proc.terminate()
    assert console.proc.wait(10) == 0  # SIGTERM: a clean stop


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    c = start_console(settings)
    yield c
    stop_console(c)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for every browser test of this module, with a profile of its own
    and nothing that reaches for the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="beanmail-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1100",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def bury_by_hand(settings: Settings, body: bytes, tube: str = "mail.normal", reason: str = "") -> int:
    """A job buried as a worker buries it, with the reason recorded in the store."""
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use(tube)
        c.watch(tube)
        c.ignore("default")
        job_id = c.put(body)
        job = c.reserve(timeout=5)
        assert job.id == job_id
        c.bury(job)
    if reason:
        store = Store(settings.store)
        store.record_failure(settings.beanstalk_url, job_id, tube, "exhausted", reason, body)
        store.close()
    return job_id


def csrf_of(console: Console, path: str = "/buried") -> tuple[str, str]:
    """(the cookie header, the form token) as a browser gets them from a page."""
    status, headers, page = console.get(path)
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token, page[:500]
    return cookie, token.group(1)


# -- in the browser -------------------------------------------------------------------------------

def test_overview_in_chromium_shows_the_tubes_the_rate_plot_and_latency(settings: Settings, notifier: Notifier,
                                                                        smtp: SmtpServer, console: Console,
                                                                        browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    for i in range(4):
        notifier.notify("welcome", f"Zoë {i} <zoe{i}@example.com>", {"name": "Zoë"}, key=f"ov:{i}")
    notifier.notify("nope", "x@example.com", {}, key="ov:poison")  # unknown template: buried as poison
    run_burst(settings)  # stops: its counts are in the store
    smtp.wait_for(4)
    browser.get(console.url + "/")  # type: ignore[attr-defined]
    tubes = {row.get_attribute("data-tube"): [td.text for td in row.find_elements(By.TAG_NAME, "td")]
             for row in browser.find_elements(By.CSS_SELECTOR, "#tubes tr[data-tube]")}  # type: ignore[attr-defined]
    assert set(tubes) >= {"mail.normal"}
    assert tubes["mail.normal"][4] == "1"  # buried, linked to /buried
    plot = browser.find_element(By.ID, "rates")  # type: ignore[attr-defined]
    assert plot.tag_name == "svg" and plot.size["width"] > 300
    lines = {p.get_attribute("data-series"): p.get_attribute("points")
             for p in plot.find_elements(By.CSS_SELECTOR, "polyline.series")}
    assert {"sent", "deferred", "bounced", "poison"} <= set(lines)
    # the last minutes' points of "sent" and "poison" rise above the axis (SVG's y grows downwards;
    # two points, in case the minute turned between the run and the page), "bounced" stays on it
    ys = {name: [float(pt.split(",")[1]) for pt in points.split()] for name, points in lines.items()}
    assert min(ys["sent"][-2:]) < ys["sent"][0] and min(ys["poison"][-2:]) < ys["poison"][0]
    assert set(ys["bounced"]) == {ys["sent"][0]}
    assert browser.find_element(By.ID, "p50").text.endswith(("ms", "s"))  # type: ignore[attr-defined]
    waits = browser.find_element(By.ID, "latency")  # type: ignore[attr-defined]
    assert {e.get_attribute("data-series") for e in waits.find_elements(By.CSS_SELECTOR, ".series")} == {"p50", "p99"}
    domain = [td.text for td in browser.find_elements(By.CSS_SELECTOR, '#domains tr[data-domain="example.com"] td')]  # type: ignore[attr-defined]
    assert domain == ["example.com", "4", "0", "0", "1", "none"]  # sent, deferred, bounced, other (the poison)
    assert "zoe1@example.com" not in browser.page_source  # type: ignore[attr-defined]
    assert browser.get_screenshot_as_file(str(tmp_path / "overview.png"))  # type: ignore[attr-defined]
    assert (tmp_path / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_buried_job_kicked_by_a_click_in_chromium_is_then_delivered(settings: Settings, notifier: Notifier,
                                                                      smtp: SmtpServer, console: Console,
                                                                      browser: object) -> None:
    from selenium.webdriver.common.by import By

    # put through the producer, then taken and buried as a worker buries an exhausted job
    job = notifier.notify("welcome", "Kim <kim@example.com>", {"name": "Kim"}, key="kick:kim")
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.watch("mail.normal")
        reserved = c.reserve(timeout=5)
        assert reserved.id == job
        c.bury(reserved)
    store = Store(settings.store)
    store.record_failure(settings.beanstalk_url, job, "mail.normal", "exhausted",
                         "exhausted after 3 attempts: 451 4.3.0 kim@example.com try later", reserved.body)
    store.close()
    with running_worker(settings):
        browser.get(console.url + "/buried")  # type: ignore[attr-defined]
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]')  # type: ignore[attr-defined]
        assert "exhausted after 3 attempts" in row.text and "k***@example.com" in row.text
        assert "kim@example.com" not in browser.page_source  # type: ignore[attr-defined]
        browser.find_element(By.ID, f"kick-{job}").click()  # type: ignore[attr-defined]
        flash = wait_until(lambda: browser.find_elements(By.ID, "flash"), 10, "the page after the kick")  # type: ignore[attr-defined]
        assert flash[0].text == f"kicked job {job}"  # type: ignore[index]
        received = smtp.wait_for(1)
    assert received[0].rcpt_tos == ["kim@example.com"]
    assert job_state(settings, job) is None  # sent and deleted


def test_suppressions_and_the_log_in_chromium(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                              console: Console, browser: object) -> None:
    from selenium.webdriver.common.by import By

    notifier.notify("welcome", "Zoë Example <zoe@example.com>", {"name": "Zoë"}, key="log:zoe")
    run_burst(settings)
    browser.get(console.url + "/log?" + urlencode({"q": "Zoë Example <ZOE@example.com>"}))  # type: ignore[attr-defined]
    log = browser.find_element(By.CSS_SELECTOR, "table.deliveries").text  # type: ignore[attr-defined]
    assert "log:zoe" in log and "sent" in log and "z***@example.com" in log and "welcome" in log

    browser.get(console.url + "/suppressions")  # type: ignore[attr-defined]
    browser.find_element(By.NAME, "address").send_keys("Bo <bo@example.org>")  # type: ignore[attr-defined]
    browser.find_element(By.ID, "suppress-add").click()  # type: ignore[attr-defined]
    wait_until(lambda: browser.find_elements(By.ID, "flash"), 10, "the page after adding")  # type: ignore[attr-defined]
    store = Store(settings.store)
    assert store.suppressed("bo@example.org") == ("operator", "added by operator")
    browser.get(console.url + "/suppressions?q=bo%40example")  # type: ignore[attr-defined]
    rows = browser.find_elements(By.CSS_SELECTOR, "#suppressions tr")[1:]  # type: ignore[attr-defined]
    assert len(rows) == 1 and "b***@example.org" in rows[0].text and "bo@example.org" not in browser.page_source  # type: ignore[attr-defined]
    rows[0].find_element(By.TAG_NAME, "button").click()
    wait_until(lambda: browser.find_elements(By.ID, "flash"), 10, "the page after removing")  # type: ignore[attr-defined]
    assert store.suppressed("bo@example.org") is None
    store.close()


# -- over plain HTTP ------------------------------------------------------------------------------

def test_a_forged_post_without_the_token_changes_nothing(settings: Settings, console: Console) -> None:
    job = bury_by_hand(settings, b"{}", reason="bad envelope")
    forged = [
        ({}, {}),  # no cookie, no token
        ({"job": str(job)}, {"Cookie": "beanmail_csrf=" + "a" * 32}),  # a cookie of the forger's own, no token
        ({"job": str(job), "csrf": "0" * 64}, {"Cookie": "beanmail_csrf=" + "a" * 32}),  # a guessed token
    ]
    for form, headers in forged:
        for path in ("/buried/delete", "/buried/kick", "/suppressions/add"):
            status, resp_headers, text = console.post(path, {**form, "address": "x@example.com", "all": "1"}, **headers)
            assert status == 403 and "nothing was changed" in text, (path, status, text)
            assert "content-security-policy" in resp_headers
    cookie, token = csrf_of(console)
    # the right token from another site's page: refused by its Origin
    status, _, _ = console.post("/buried/delete", {"job": str(job), "csrf": token}, Cookie=cookie,
                                Origin="http://evil.example")
    assert status == 403
    assert job_state(settings, job) == "buried"
    assert Store(settings.store).suppressed("x@example.com") is None
    # the console's own form, as a browser sends it, works
    status, headers, _ = console.post("/buried/delete", {"job": str(job), "csrf": token}, Cookie=cookie,
                                      Origin=console.url)
    assert status == 303 and headers["location"].startswith("/buried?done=deleted+job")
    assert job_state(settings, job) is None


def test_delete_all_and_kick_all_of_a_tube_and_a_jobs_page(settings: Settings, console: Console) -> None:
    secret_body = (b'{"v":2,"signed":"{\\"v\\":2,\\"kind\\":\\"mail\\",\\"id\\":\\"s1\\",\\"to\\":{\\"address\\":'
                   b'\\"ann@example.com\\"},\\"template\\":\\"welcome\\",\\"context\\":{\\"api_token\\":\\"hunter2\\"}}",'
                   b'"sig":"deadbeefcafe"}')
    bulk = [bury_by_hand(settings, secret_body, "mail.bulk", reason="poison: signature") for _ in range(3)]
    normal = [bury_by_hand(settings, b"{}", "mail.normal") for _ in range(2)]
    status, headers, page = console.get(f"/job/{bulk[0]}")
    assert status == 200 and "buried" in page and "poison: signature" in page
    assert "deadbeefcafe" not in page and "hunter2" not in page and "ann@example.com" not in page
    assert "a***@example.com" in page and "(hidden)" in page
    cookie, token = csrf_of(console)
    status, _, _ = console.post("/buried/delete", {"tube": "mail.bulk", "all": "1", "csrf": token}, Cookie=cookie)
    assert status == 303 and [job_state(settings, j) for j in bulk] == [None] * 3
    assert [job_state(settings, j) for j in normal] == ["buried"] * 2  # one tube at a time
    status, _, _ = console.post("/buried/kick", {"all": "1", "csrf": token}, Cookie=cookie)
    assert status == 303 and [job_state(settings, j) for j in normal] == ["ready"] * 2
    status, _, page = console.get(f"/job/{bulk[0]}")  # gone from beanstalkd; the store remembers
    assert status == 200 and "Not in beanstalkd" in page and "poison: signature" in page


def test_metrics_cover_the_pool_after_a_known_run(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                                  console: Console) -> None:
    """Two worker processes at once (`beanmail worker --burst`), then /metrics read with
    prometheus_client's own parser."""
    for i in range(12):
        notifier.notify("welcome", f"p{i}@example.com", {"name": "p"}, key=f"m:{i}")
    notifier.notify("welcome", "reject@example.com", {"name": "r"}, key="m:bounce")  # 550 5.1.1
    notifier.notify("welcome", "tempfail@example.com", {"name": "t"}, key="m:defer")  # 451: released, delayed
    notifier.notify("nope", "x@example.com", {}, key="m:poison")
    notifier.notify("welcome", "u@example.com", {"name": "u"}, priority="urgent", key="m:urgent")
    env = bare_env(settings, BEANMAIL_TEMPLATES=str(ROOT / "templates"), BEANMAIL_BACKOFF_BASE="60")
    workers = [subprocess.Popen([str(VENV_BIN / "beanmail"), "worker", "--burst"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [w.wait(60) for w in workers] == [0, 0]
    Store(settings.store).suppress("op@example.com", "by hand", "operator")
    status, headers, text = console.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    messages = {(s.labels["outcome"], s.labels["tube"]): s.value
                for s in families["beanmail_messages"].samples if s.name == "beanmail_messages_total"}
    assert messages == {("sent", "mail.normal"): 12, ("sent", "mail.urgent"): 1, ("bounced", "mail.normal"): 1,
                        ("deferred", "mail.normal"): 1, ("poison", "mail.normal"): 1}
    jobs = {(s.labels["tube"], s.labels["state"]): s.value for s in families["beanmail_tube_jobs"].samples}
    assert jobs[("mail.normal", "buried")] == 1 and jobs[("mail.normal", "delayed")] == 1
    assert jobs[("mail.normal", "ready")] == 0 and jobs[("mail.normal", "reserved")] == 0
    hist = {s.name: s for s in families["beanmail_delivery_seconds"].samples}
    assert hist["beanmail_delivery_seconds_count"].value == 13 and hist["beanmail_delivery_seconds_sum"].value > 0
    inf = [s for s in families["beanmail_delivery_seconds"].samples if s.labels.get("le") == "+Inf"]
    assert inf[0].value == 13
    suppressed = {s.labels["source"]: s.value for s in families["beanmail_suppressed"].samples}
    assert suppressed["bounce"] == 1 and suppressed["operator"] == 1 and suppressed["unsubscribe"] == 0
    assert families["beanmail_workers"].samples[0].value == 0  # both exited
    assert {s.labels["component"]: s.value for s in families["beanmail_up"].samples} == {"beanstalkd": 1, "store": 1}
    assert len(smtp.messages) == 13


def test_healthz_turns_503_when_beanstalkd_stops(settings: Settings, beanstalkd: Beanstalkd,
                                                 console: Console) -> None:
    status, headers, text = console.get("/healthz")
    assert (status, text) == (200, "ok\n") and "default-src 'none'" in headers["content-security-policy"]
    beanstalkd.stop()
    status, _, text = console.get("/healthz")
    assert status == 503 and text.startswith("beanstalkd: not answering") and "store" not in text
    status, _, page = console.get("/")  # the overview still renders, saying what is down
    assert status == 200 and "unreachable" in page


def test_basic_auth_guards_every_page_but_healthz_and_a_public_address_needs_a_password(
        settings: Settings) -> None:
    c = start_console(settings, BEANMAIL_WEB_PASSWORD="s3cret pass")
    try:
        for path in ("/", "/buried", "/metrics", "/log", "/suppressions", "/job/1", "/static/console.css"):
            status, headers, _ = c.get(path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
            assert "content-security-policy" in headers
        wrong = "Basic " + base64.b64encode(b"admin:guess").decode()
        assert c.get("/", Authorization=wrong)[0] == 401
        assert c.post("/buried/kick", {"all": "1"})[0] == 401
        right = "Basic " + base64.b64encode("admin:s3cret pass".encode()).decode()
        # a wrong password makes its client wait (tests/test_web_security.py)
        wait_until(lambda: c.get("/", Authorization=right)[0] == 200, 5, "the wait after a wrong password")
        assert c.get("/metrics", Authorization=right)[0] == 200
        assert c.get("/healthz")[:1] == (200,)
        # provider webhooks are served ahead of the password: a forged Mailgun event is refused
        # by its own signature check (403), not by basic auth (401)
        assert c.post("/webhooks/mailgun", {"signature": "forged"})[0] == 403
    finally:
        stop_console(c)
    env = bare_env(settings)
    refused = beanmail("web", "--listen", f"0.0.0.0:{free_port()}", env=env, check=False, timeout=20)
    assert refused.returncode == 78 and "BEANMAIL_WEB_PASSWORD" in refused.stderr
    bad = beanmail("web", "--listen", "nonsense", env=env, check=False, timeout=20)
    assert bad.returncode == 78 and "HOST:PORT" in bad.stderr


def test_addresses_are_shown_when_masking_is_off(settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, key="unmasked")
    run_burst(settings)
    c = start_console(settings, BEANMAIL_MASK_ADDRESSES="false")
    try:
        status, _, page = c.get("/log?q=zoe%40example.com")
        assert status == 200 and "zoe@example.com" in page
    finally:
        stop_console(c)


def test_the_supervisord_program_serves_the_console_of_the_whole_pool(beanstalkd: Beanstalkd, smtp: SmtpServer,
                                                                      tmp_path: Path) -> None:
    """The repository's supervisord.conf runs `beanmail web` beside the pool; its /metrics sees
    every reserving connection of the pool (mail_00, mail_01, urgent_00, fanout_00 at least)."""
    from .stack import Supervisor

    env = bare_env(None, BEANMAIL_BEANSTALK_URL=beanstalkd.url, BEANMAIL_SMTP_URL=smtp.url,
                   BEANMAIL_STORE=str(tmp_path / "store.sqlite3"))
    sup = Supervisor(tmp_path / "stack", env)
    try:
        states = sup.start().wait_running()
        assert states["beanmail:web_00"][0] == "RUNNING"
        web = Console(f"http://127.0.0.1:{sup.web_port}", sup.web_port, None)  # type: ignore[arg-type]
        wait_until(lambda: port_open("127.0.0.1", sup.web_port), 15, "the console program to listen")
        assert web.get("/healthz")[:1] == (200,)

        def workers() -> float:
            text = web.get("/metrics")[2]
            return next(s.value for f in text_string_to_metric_families(text) if f.name == "beanmail_workers"
                        for s in f.samples)
        def reserving() -> int:
            with connect(beanstalkd.url, encoding=None) as c:
                return int(c.stats()["current-workers"])
        wait_until(lambda: reserving() >= 4 and workers() == reserving(), 15, "the pool's reserving connections")
        status, _, page = web.get("/")
        assert status == 200 and "beanmail:web_00 RUNNING" in re.sub(r"<[^>]+>", "", page)
        pids = {pid for name, (_, pid) in states.items() if name.split(":")[1].startswith(("mail_", "urgent_"))}
        shown = {int(m) for m in re.findall(r'<tr data-worker="[^"]+:(\d+)">', page)}
        assert pids <= shown  # the registry's table lists every mail and urgent worker
        running = next(s.value for f in text_string_to_metric_families(web.get("/metrics")[2])
                       if f.name == "beanmail_registered_workers" for s in f.samples if s.labels["state"] == "running")
        assert running >= len(pids)
    finally:
        sup.shutdown()
    assert "stopped: web_00 (exit status 0)" in sup.log()


def test_bounces_and_the_bulk_brake_as_the_feedback_stage_records_them(settings: Settings, console: Console) -> None:
    store = Store(settings.store)
    store.record_bounce(source="pipe", kind="dsn", classification="hard", address="Gone@Example.org",
                        key="k:gone@example.org", status="5.1.1", detail="550 5.1.1 <gone@example.org>: no such user")
    assert console.get("/metrics")[2].count("beanmail_brake_engaged 0.0") == 1
    store.set_brake(True, "bounce rate 9/100 = 9.0% over the last 100 bulk deliveries passes 5.0%")
    store.close()
    status, _, page = console.get("/bounces?q=gone%40example.org")
    table = page.split('<table id="bounces"')[1]  # (the search box shows what the operator typed)
    assert status == 200 and "5.1.1" in table and "g***@example.org" in table and "gone@" not in table
    status, _, page = console.get("/")
    assert status == 200 and ">ENGAGED<" in page and "bounce rate 9/100" in page
    assert "beanmail_brake_engaged 1.0" in console.get("/metrics")[2]


def test_mounted_in_a_web_app_links_and_forms_follow_the_mount_point(settings: Settings) -> None:
    """make_app() under a path prefix of another WSGI app (werkzeug's dispatcher, as Flask uses)."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    from worker.web.app import make_app

    def host_app(environ: dict, start_response):  # noqa: ANN202 - the host application
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the host app"]

    console = make_app(settings, password="pw")
    client = Client(DispatcherMiddleware(host_app, {"/beanmail": console}))
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
    assert client.get("/beanmail/").status_code == 401 and client.get("/").get_data() == b"the host app"
    page = client.get("/beanmail/suppressions", headers=auth)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'href="/beanmail/buried"' in text and 'action="/beanmail/suppressions/add"' in text
    assert "Path=/beanmail" in page.headers["Set-Cookie"]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', text).group(1)  # type: ignore[union-attr]
    done = client.post("/beanmail/suppressions/add", data={"address": "m@example.com", "csrf": token}, headers=auth)
    assert done.status_code == 303 and done.headers["Location"].startswith("/beanmail/suppressions?done=")
    assert Store(settings.store).suppressed("m@example.com") == ("operator", "added by operator")
    console.close()


def test_a_fleet_of_beanstalkd_servers_is_summed_and_each_is_checked(settings: Settings, beanstalkd: Beanstalkd,
                                                                     tmp_path: Path) -> None:
    second = Beanstalkd(tmp_path / "second").start()
    try:
        fleet = settings.replace(beanstalk_url=f"{beanstalkd.url},{second.url}")
        bury_by_hand(settings, b"{}", "mail.bulk")
        bury_by_hand(settings.replace(beanstalk_url=second.url), b"{}", "mail.bulk")
        c = start_console(fleet)
        try:
            text = c.get("/metrics")[2]
            assert 'beanmail_tube_jobs{state="buried",tube="mail.bulk"} 2.0' in text
            assert c.get("/healthz")[:1] == (200,)
            # the pages of jobs read the first server (a job id is one server's); pause acts on every one
            for path in ("/buried", "/buried?domain=example.com", "/deferred", "/events", "/events?view=failed",
                         "/mailout?key=k", "/job/1", "/"):
                status, _, page = c.get(path)
                assert status == 200 and "the console failed" not in page, (path, status, page[:300])
            cookie, token = csrf_of(c, "/")
            status, headers, _ = c.post("/tube/pause", {"tube": "mail.bulk", "seconds": "300", "csrf": token},
                                        Cookie=cookie)
            assert status == 303 and "on+2+servers" in headers["location"]
            for url in (beanstalkd.url, second.url):
                with connect(url, encoding=None) as bs:
                    assert int(bs.stats_tube("mail.bulk")["pause-time-left"]) > 0
            second.stop()
            status, _, body = c.get("/healthz")
            assert status == 503 and body == f"beanstalkd: not answering: {second.url}: [Errno 111] Connection refused\n"
            text = c.get("/metrics")[2]  # what the servers that answer hold, and which did not
            assert 'beanmail_tube_jobs{state="buried",tube="mail.bulk"} 1.0' in text
            assert f'beanmail_beanstalkd_up{{server="{second.url}"}} 0.0' in text
            assert 'beanmail_up{component="beanstalkd"} 0.0' in text
        finally:
            stop_console(c)
    finally:
        second.stop()


def test_the_console_counts_add_up_on_both_store_backends(store_location: str) -> None:
    """What worker processes write every few seconds, on SQLite and PostgreSQL: counts added to
    the same minute, the largest latency kept, per-domain rows bounded, old ones pruned."""
    from worker.web import figures
    from worker.web.tally import TOP_DOMAINS, Tally

    store = Store(store_location)
    now = 1_800_000_000.0
    first, second = Tally(store_location), Tally(store_location)  # two worker processes
    for i in range(TOP_DOMAINS + 10):
        first.record("mail.bulk", "sent", 0.3, f"d{i}.example", now=now)
    first.record("mail.bulk", "sent", 0.3, "d0.example", now=now)
    second.record("mail.bulk", "sent", 42.0, "d0.example", now=now)
    second.record("mail.normal", "deferred", None, "d1.example", now=now)
    first.flush(store)
    second.flush()  # its own connection, as the flusher thread writes
    store.add_console_counts([], [(int(now // 60) - 5000, "old.example", "sent", 1)], prune_before=int(now // 60) - 10)
    assert sorted(store.console_totals()) == [("mail.bulk", "sent", TOP_DOMAINS + 12), ("mail.normal", "deferred", 1)]
    buckets, total, largest = store.console_latency(0)
    assert sum(buckets) == TOP_DOMAINS + 12 and largest == 42.0 and abs(total - (0.3 * (TOP_DOMAINS + 11) + 42)) < 1e-6
    rows = {(d, o): n for d, o, n in store.domain_figures(0)}
    assert rows[("d0.example", "sent")] == 3 and rows[("d1.example", "deferred")] == 1
    assert rows[("(other)", "sent")] == 10 and len(rows) == TOP_DOMAINS + 2 and ("old.example", "sent") not in rows
    table = figures.domains(store, Settings(rate_limits={"d0.example": 2.0}), now=now)
    assert table[0] == {"domain": "d0.example", "sent": 3, "deferred": 0, "bounced": 0, "other": 0, "rate": 2.0,
                        "total": 3} and table[-1]["domain"] != "(other)"
    (minute, per_bucket, largest_of_minute), = store.console_latency_by_minute(0)
    assert minute == int(now // 60) and sum(per_bucket) == TOP_DOMAINS + 12 and largest_of_minute == 42.0
    waits = figures.latency_series(store, [minute - 1, minute])
    assert waits["p50"][0] is None and waits["p99"][0] is None and 30 < waits["p99"][1] <= 42.0
    lat = figures.latency(store, now=now)
    assert lat["count"] == TOP_DOMAINS + 12 and lat["p50"] <= 0.5 and 30 < lat["p99"] <= 42.0
    store.close()
