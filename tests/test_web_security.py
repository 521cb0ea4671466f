"""The operator console against a hostile network: the real `beanmail web` process on loopback,
spoken to over raw sockets (a foreign Host, half-sent and trickling requests, bad
Content-Length, password guessing), a real headless Chromium for a DNS-rebinding-style visit,
and hostile job bodies in a real beanstalkd for every page to show. Then secrets: `beanmail
settings`, error messages, logs and pages never show a password."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from producer import envelope
from worker import redact
from worker.logs import mask_text
from worker.settings import Settings
from worker.store import Store
from worker.web.guard import LoginThrottle, host_allowed, host_rules, split_host

from .conftest import bare_env, beanmail, job_state
from .servers import free_port, wait_until
from .test_web import Console, bury_by_hand, csrf_of, start_console, stop_console


def raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, str, float]:
    """(status, the whole response, seconds to it) for bytes written as they are."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    text = b"".join(chunks).decode("utf-8", "replace")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, text, time.monotonic() - started


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is None or len(body) >= int(m.group(1))


def get(port: int, path: str, host: str | None = None, extra: str = "") -> tuple[int, str, float]:
    host = host if host is not None else f"127.0.0.1:{port}"
    return raw(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode())


def stop_and_log(console: Console) -> str:
    stop_console(console)
    return console.proc.stdout.read() if console.proc.stdout else ""


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    c = start_console(settings, BEANMAIL_WEB_TIMEOUT="2")
    yield c
    if c.proc.poll() is None:
        stop_console(c)


# -- Host --------------------------------------------------------------------------------------------

def test_a_foreign_host_is_refused_before_the_console_reads_or_changes_anything(settings: Settings,
                                                                              console: Console) -> None:
    port = console.port
    job_id = bury_by_hand(settings, b'{"v":2,"kind":"mail","id":"k1","to":[{"address":"zoe@example.com"}]}',
                          reason="exhausted after 3 attempts")
    cookie, token = csrf_of(console)
    evil = f"rebind.evil.example:{port}"
    status, page, _ = get(port, "/log", host=evil)
    assert status == 421 and "rebind.evil.example" in page and "BEANMAIL_WEB_HOSTS" in page
    assert "z***@example.com" not in page and "k1" not in page
    for path, form in (("/suppressions/add", f"csrf={token}&address=victim%40example.com&reason=x"),
                       ("/buried/delete", f"csrf={token}&tube=mail.normal&all=1")):
        status, page, _ = raw(port, (f"POST {path} HTTP/1.1\r\nHost: {evil}\r\nCookie: {cookie}\r\n"
                                     "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
                                     f"Content-Length: {len(form)}\r\n\r\n{form}").encode())
        assert status == 421, page
    store = Store(settings.store)
    assert store.suppression_search("victim", limit=5) == []
    store.close()
    assert job_state(settings, job_id) == "buried"
    for host in ("", "evil.example", f"localhost.evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1",
                 f"127.0.0.1:{port}@evil.example", "[::1"):
        status, page, _ = get(port, "/healthz", host=host)
        assert status in (400, 421), (host, status, page)
    assert raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 400  # no Host at all
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert get(port, "/healthz", host=host)[0] == 200, host
    assert "host not allowed" in stop_and_log(console)


def test_names_added_by_the_setting_are_served(settings: Settings) -> None:
    c = start_console(settings, BEANMAIL_WEB_HOSTS="console.example.org, mail.example.org:443")
    try:
        assert get(c.port, "/healthz", host="console.example.org")[0] == 200  # any port
        assert get(c.port, "/healthz", host=f"console.example.org:{c.port}")[0] == 200
        assert get(c.port, "/healthz", host="mail.example.org:443")[0] == 200
        assert get(c.port, "/healthz", host=f"mail.example.org:{c.port}")[0] == 421
        assert get(c.port, "/healthz", host="other.example.org")[0] == 421
    finally:
        stop_console(c)
    bad = beanmail("web", "--listen", f"127.0.0.1:{free_port()}", check=False,
                   env=bare_env(settings, BEANMAIL_WEB_HOSTS="ok.example, bad host/x"))
    assert bad.returncode == 78 and "BEANMAIL_WEB_HOSTS: 'bad host/x'" in bad.stderr


def test_a_rebinding_page_in_chromium_gets_the_refusal_not_the_console(settings: Settings, console: Console,
                                                                       tmp_path: Path) -> None:
    """Chromium resolves the attacker's name to 127.0.0.1 (as a rebinding DNS answer would):
    what it reads from the console is the refusal."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    store = Store(settings.store)
    store.suppress("secret-victim@example.com", "test", "operator")
    store.close()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
                "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.set_page_load_timeout(20)
        driver.get(f"http://rebind.evil.example:{console.port}/suppressions")
        text = driver.find_element("tag name", "body").text
        assert "is not a name of this console" in text and "s***@example.com" not in text
        driver.get(f"http://127.0.0.1:{console.port}/suppressions")  # the operator's own visit works
        assert "s***@example.com" in driver.find_element("tag name", "body").text
    finally:
        driver.quit()


# -- slow, half-sent and malformed requests ----------------------------------------------------------

def closed_by_server(s: socket.socket, deadline: float) -> float | None:
    """Seconds until the server closed ``s`` (None: still open at ``deadline``, a monotonic time)."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:  # reset
            return time.monotonic() - started
    return None


def test_a_trickling_request_is_closed_though_never_silent(console: Console) -> None:
    """A byte every 0.3 s is never silent for the 2 s timeout; the whole request must still
    come within it."""
    s = socket.create_connection(("127.0.0.1", console.port), timeout=5)
    s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n".encode())
    started = time.monotonic()
    closed = None
    try:
        while closed is None and time.monotonic() - started < 10:
            try:
                s.sendall(b"X")
            except OSError:
                closed = time.monotonic() - started
                break
            if closed_by_server(s, time.monotonic() + 0.3) is not None:
                closed = time.monotonic() - started
    finally:
        s.close()
    assert closed is not None and 1.5 < closed < 5, closed


def test_half_sent_requests_hold_no_thread_and_are_closed_then_the_console_answers(console: Console) -> None:
    port, pid = console.port, console.proc.pid
    assert get(port, "/healthz")[0] == 200  # its threads started
    before = threads_of(pid)
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET /log HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())  # never ends
            socks.append(s)
        assert threads_of(pid) <= before + 1, (before, threads_of(pid))  # not one thread per connection
        status, _, took = get(port, "/healthz")  # while they hang: answered at once
        assert status == 200 and took < 1.5, took
        # each closed 2 s after its request began (the cleanup runs every second)
        deadline = time.monotonic() + 10
        still_open = [s for s in socks if closed_by_server(s, deadline) is None]
        assert not still_open, f"{len(still_open)} half-sent requests still open after 10 s"
        assert threads_of(pid) <= before + 1
    finally:
        for s in socks:
            s.close()


def test_past_the_connection_limit_the_oldest_half_sent_requests_make_room(settings: Settings) -> None:
    """800 half-sent requests, more than the 500 connections: with a 60 s timeout, a normal
    request still gets in within seconds (the longest-waiting ones are closed for it)."""
    c = start_console(settings, BEANMAIL_WEB_TIMEOUT="60")
    socks = []
    try:
        for _ in range(800):
            s = socket.create_connection(("127.0.0.1", c.port), timeout=5)
            s.sendall(f"GET /log HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nX-Slow: ".encode())
            socks.append(s)
        status, _, took = get(c.port, "/healthz")
        assert status == 200 and took < 10, took
        assert threads_of(c.proc.pid) < 20
    finally:
        for s in socks:
            s.close()
        stop_console(c)


def test_a_bad_content_length_is_answered_at_once(settings: Settings, console: Console) -> None:
    port = console.port
    cookie, token = csrf_of(console, "/suppressions")
    for length, expected in (("-1", 400), ("abc", 400), ("1e3", 400), ("99999999999999999999999", 400),
                             (str(2 * 1024 * 1024), 400), ("", 400), ("12, 13", 400)):
        status, page, took = raw(port, (f"POST /suppressions/add HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                        f"Cookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                                        f"Content-Length: {length}\r\n\r\ncsrf={token}&address=a%40example.com"
                                        ).encode(), timeout=5)
        assert status == expected and took < 2, (length, status, took, page[:300])
    store = Store(settings.store)
    assert store.suppression_search("a@example.com", limit=5) == []
    store.close()


def test_an_inbound_reply_with_attachments_may_be_larger_than_a_form(settings: Settings, console: Console) -> None:
    """A provider posting a 2 MiB reply (its attachments) reaches the inbound webhook, which
    answers it (here 401: no password is configured for it), where the same length on a console
    form or a bounce webhook is refused at once; above 40 MiB the reply is refused at once too."""
    port = console.port
    body = b'{"RawEmail": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, page, _ = raw(port, (f"POST /webhooks/inbound/postmark HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                          + body, timeout=30)
    assert status != 400 and "above the largest body" not in page, page[:300]
    for path, length in (("/webhooks/postmark", 2 * 1024 * 1024), ("/webhooks/inbound/postmark", 41 * 1024 * 1024)):
        status, page, took = raw(port, (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                        f"Content-Length: {length}\r\n\r\n{{}}").encode(), timeout=5)
        assert status == 400 and "above the largest body" in page and took < 2, (path, status, page[:300])


def test_failed_logins_are_slowed_per_client_and_logged(settings: Settings) -> None:
    c = start_console(settings, BEANMAIL_WEB_PASSWORD="right horse battery")

    def auth(password: str) -> str:
        return "Authorization: Basic " + base64.b64encode(f"op:{password}".encode()).decode() + "\r\n"

    try:
        assert get(c.port, "/", extra=auth("guess-1"))[0] == 401
        status, page, _ = get(c.port, "/", extra=auth("guess-2"))  # at once: refused unread
        assert status == 429 and "try again in" in page and "Retry-After: 1" in page
        assert get(c.port, "/", extra=auth("right horse battery"))[0] == 429  # not even the right one now
        wait_until(lambda: get(c.port, "/", extra=auth("guess-3"))[0] == 401, 5, "the first wait to end")
        status, page, _ = get(c.port, "/", extra=auth("guess-4"))
        assert status == 429 and "Retry-After: 2" in page  # the second failure in a row: 2 s
        assert get(c.port, "/healthz")[0] == 200  # asks no password
        wait_until(lambda: get(c.port, "/", extra=auth("right horse battery"))[0] == 200, 8, "the wait to end")
        assert get(c.port, "/", extra=auth("guess-5"))[0] == 401  # a good login cleared the count
    finally:
        log = stop_and_log(c)
    failed = [json.loads(line) for line in log.splitlines() if '"console login failed"' in line]
    assert [f["failures"] for f in failed] == [1, 2, 1] and all(f["client"] == "127.0.0.1" for f in failed)
    assert "guess" not in log and "right horse" not in log


# -- hostile job bodies: no page answers 500 ---------------------------------------------------------

HOSTILE = [
    b"not json at all",
    b"\xff\xfe\x00\x01 not utf-8 \xc3\x28",
    b'{"v":2,"kind":"mail","id":"nul\x00key","to":[{"address":"nul\\u0000@example.com"}]}',
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"[" * 20000 + b"]" * 20000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"v":2,"to":' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"v":2,"kind":"mail","id":"big","to":[{"address":"big@example.com"}],"context":{"x":"' + b"y" * 60000 + b'"}}',
    b'{"v":2,"kind":"mail","id":' + b"9" * 5000 + b',"to":"weird@example.com"}',
    b'{"v":2,"kind":"mail","id":{"a":1},"to":{"address":{"x":1}},"template":["t"],"context":[1]}',
    b'{"v":2,"kind":"mail","id":"k","to":[null, 5, ["x"], {"email":"e@example.com"}],"template":7}',
    b'{"v":2,"signed":"{not json","sig":"00"}',
    b'{"v":2,"signed":{"v":2,"to":' + b"[" * 950 + b"]" * 950 + b'},"sig":"00"}',
    b'{"v":2,"kind":"mail","id":"<script>alert(1)</script>","to":[{"address":"bad address@@example.com"}],'
    b'"template":"<b>x</b>","created_at":1e999}',
    b"",
]


def test_no_page_answers_500_for_hostile_jobs_or_ids(settings: Settings, store_location: str) -> None:
    settings = settings.replace(store=store_location)
    console = start_console(settings, BEANMAIL_STORE=store_location)
    try:
        walk_every_page(settings, console, store_location)
    finally:
        log = stop_and_log(console)
    assert "console page failed" not in log, log[-3000:]


def walk_every_page(settings: Settings, console: Console, store_location: str) -> None:
    port = console.port
    postgres = "://" in store_location  # its text holds no NUL: no failure recorded with one
    ids = []
    for i, body in enumerate(HOSTILE):
        tube = "mail.normal" if i % 2 else "mail.bulk"
        recorded = not (postgres and b"\x00" in body)
        ids.append(bury_by_hand(settings, body or b" ", tube=tube,
                                reason=f"poison: recipient 'bad address@@example.com' #{i} \udcff".encode(
                                    "utf-8", "replace").decode() if recorded else ""))
    store = Store(settings.store)
    store.record_failure(settings.beanstalk_url, 2**62, "mail.normal", "poison", "gone", b"\xff")
    store.close()
    pages = ["/", "/?hours=24", "/?hours=abc", "/buried", "/buried?tube=mail.bulk", "/buried?tube=%00%ff",
             "/log", "/log?q=bad+address%40%40example.com", "/log?q=%00", "/log?q=" + "a" * 5000 + "%40x",
             "/log?q=%3C%40%3E", "/suppressions?q=%3C%3E%40", "/suppressions?q=%25", "/bounces?q=%40%40",
             "/bounces?q=%ff%fe", "/metrics", "/healthz", "/job/0", "/job/99999999999999999999999",
             "/job/18446744073709551615", "/job/9223372036854775807", f"/job/{2**62}", "/job/%EF%BC%91",
             "/job/" + "9" * 5000, "/nowhere", "/job/-1", "/deferred", "/events", "/events?view=retried",
             "/events?view=failed", "/replies", "/replies?outcome=refused", "/mailout?key=bad+address%40%40example.com",
             "/mailout?key=%25_%00%ff", "/log?q=bad+addr", "/buried?domain=example.com&reason=%25",
             "/buried?template=%ff%fe&tube=mail.bulk", "/?refresh=10", "/deferred?refresh=%ff"]
    status, page, _ = get(port, "/buried")
    listed = sorted(set(re.findall(r'href="/job/(\d+)"', page)), key=int)
    assert status == 200 and len(listed) >= len(ids) - 2, (ids, listed)  # on PostgreSQL: all but the unrecorded
    pages += [f"/job/{j}" for j in sorted(set(ids) | {int(j) for j in listed})]
    for path in pages:
        status, page, took = get(port, path)
        assert status in (200, 404, 503) and status != 500, (path, status, page[:500])
        shown = re.sub(r'<input name="(q|key)" value="[^"]*"', "", page)  # (the search box shows what was typed)
        assert "bad address@@" not in shown and "address@@example.com" not in shown, path
    status, page, _ = get(port, "/buried")
    assert "b***@example.com" in page
    cookie, token = csrf_of(console)
    forms = [("/buried/kick", {"job": "99999999999999999999999"}), ("/buried/kick", {"job": "١٢"}),
             ("/buried/kick", {"all": "1", "tube": "x" * 300}), ("/buried/kick", {"all": "1", "tube": "bad tube\n"}),
             ("/buried/delete", {"job": "18446744073709551616"}), ("/buried/delete", {"job": "0"}),
             ("/buried/delete", {"all": "1", "tube": "-nope"}), ("/buried/delete", {"all": "1", "tube": "é" * 100}),
             ("/suppressions/add", {"address": "bad address@@example.com"}),
             ("/suppressions/add", {"address": "a@" + "b" * 300 + ".com", "reason": "x" * 70000}),
             ("/suppressions/remove", {"ref": "x", "hint": "%_%@%"}), ("/suppressions/remove", {}),
             ("/buried/kick", {"filter": "1", "domain": "example.com", "reason": "ÿ%_"}),
             ("/buried/delete", {"filter": "1", "template": "%", "tube": "-bad"}),
             ("/tube/pause", {"tube": "mail.bulk", "seconds": "-1"}), ("/tube/resume", {"tube": "nope"}),
             ("/host/disable", {"target": "%_"}), ("/host/enable", {"target": "é" * 100})]
    for path, form in forms:
        status, _, page = console.post(path, {"csrf": token, **form}, Cookie=cookie)
        assert status in (303, 400, 404, 413), (path, form, status, page[:300])


# -- secrets and masking -----------------------------------------------------------------------------

def test_a_signed_job_shows_its_envelope_and_recipient_with_only_its_secrets_hidden(settings: Settings,
                                                                                     console: Console) -> None:
    inner = {"v": 2, "kind": "mail", "id": "reset:7", "template": "welcome",
             "to": [{"address": "zoe@example.com", "name": "Zoë"}],
             "context": {"author": "Ann Author", "signed_by": "Bea", "reset_token": "tok-7c1d9e",
                         "nested": [{"apiKey": "ak-55aa", "password": "pw-123", "keyword": "visible"}]}}
    body = envelope.sign(json.dumps(inner).encode(), "job-signing-secret")
    job_id = bury_by_hand(settings, body, reason="poison: invalid To address 'bad address@@example.com'; 550 <zoe@example.com>")
    status, page, _ = get(console.port, f"/job/{job_id}")
    assert status == 200
    shown = re.search(r'<pre id="body">(.*?)</pre>', page, re.S).group(1)  # type: ignore[union-attr]
    assert "&#34;template&#34;: &#34;welcome&#34;" in shown and "z***@example.com" in shown
    assert "Ann Author" in shown and "Bea" in shown and "visible" in shown  # author, signed_by: not secrets
    for secret in ("tok-7c1d9e", "ak-55aa", "pw-123", "zoe@", "&#34;signed&#34;", "&#34;sig&#34;"):
        assert secret not in shown, secret
    assert shown.count("(hidden)") == 3
    status, page, _ = get(console.port, "/buried")
    row = re.search(rf'<tr data-job="{job_id}">(.*?)</tr>', page, re.S).group(1)  # type: ignore[union-attr]
    assert "welcome" in row and "z***@example.com" in row and "b***@example.com" in row and "@@" not in row


def test_settings_never_print_a_password(tmp_path: Path) -> None:
    env = bare_env(None, BEANMAIL_SMTP_URL="smtp://relay-user:Sm%40tp-pass!@relay.example:587?starttls=required",
                   BEANMAIL_BOUNCE_MAILBOX="imaps://bounces:imap-pass-77@imap.example/INBOX",
                   BEANMAIL_STORE="postgresql://beanmail:pg-pass-88@db.example/beanmail",
                   BEANMAIL_SECRET="signing-key-1,signing-key-2", BEANMAIL_WEB_PASSWORD="console-pass-99",
                   BEANMAIL_SUPERVISOR_URL="http://sup:sup-pass-11@127.0.0.1:9001")
    for args in (("settings",), ("settings", "--json")):
        out = beanmail(*args, env=env).stdout
        for secret in ("Sm%40tp-pass", "Sm@tp-pass", "imap-pass-77", "pg-pass-88", "signing-key", "console-pass-99",
                       "sup-pass-11"):
            assert secret not in out, (args, secret)
        assert "smtp://relay-user:***@relay.example:587" in out and "imaps://bounces:***@imap.example" in out
        assert "postgresql://beanmail:***@db.example/beanmail" in out
    rows = {r["variable"]: r["value"] for r in json.loads(beanmail("settings", "--json", env=env).stdout)}
    assert rows["BEANMAIL_SECRET"] == "(set)" and rows["BEANMAIL_WEB_PASSWORD"] == "(set)"
    bad = beanmail("settings", env={**env, "BEANMAIL_SMTP_URL": "smtp://u:Sm-pass-bad@relay.example:nope"},
                   check=False)
    assert bad.returncode == 78 and "bad port" in bad.stderr and "Sm-pass-bad" not in bad.stderr
    port = free_port()  # supervisord not answering there: its URL is in the error
    down = {**env, "BEANMAIL_STORE": str(tmp_path / "s.sqlite3"), "BEANMAIL_BEANSTALK_URL": f"beanstalk://127.0.0.1:{port}",
            "BEANMAIL_SUPERVISOR_URL": f"http://sup:sup-pass-11@127.0.0.1:{port}"}
    for args in (("status",), ("status", "--json")):
        status = beanmail(*args, env=down, check=False)
        assert f"not reachable at http://sup:***@127.0.0.1:{port}" in status.stdout, status.stdout
        assert "sup-pass-11" not in status.stdout + status.stderr


def test_an_unreachable_store_with_a_password_is_reported_without_it(settings: Settings) -> None:
    store_url = f"postgresql://beanmail:pg-pass-4242@127.0.0.1:{free_port()}/nowhere"
    c = start_console(settings, BEANMAIL_STORE=store_url)
    try:
        for path in ("/healthz", "/", "/log", "/suppressions", "/metrics"):
            status, page, _ = get(c.port, path)
            assert "pg-pass-4242" not in page, (path, page[:400])
        status, page, _ = get(c.port, "/healthz")
        assert status == 503 and "store" in page
    finally:
        log = stop_and_log(c)
    assert "pg-pass-4242" not in log


# -- the parts, without a server ---------------------------------------------------------------------

def test_masking_covers_malformed_addresses() -> None:
    assert mask_text("recipient 'bad address@@example.com' is not valid") == "recipient 'b***@example.com' is not valid"
    assert "address@" not in mask_text("bad address@@example.com")
    assert mask_text('"bad address"@example.com') == '"b***"@example.com'
    assert mask_text("550 <gone@example.org>: no such user") == "550 <g***@example.org>: no such user"
    assert mask_text("a@b@c.example") == "a***@c.example"
    assert mask_text("k:zoe@example.com, x@[IPv6:::1]") == "k:z***@example.com, x***@[IPv6:::1]"
    for text in ("bad address@@example.com", "'a b@@c.d'", "z***@example.com", '"q"@x.y'):
        assert mask_text(mask_text(text)) == mask_text(text)


def test_secret_fields_are_found_by_name_and_word_not_by_substring() -> None:
    for name in ("sig", "secret", "password", "reset_token", "resetToken", "api_key", "apiKey", "API-KEY",
                 "auth", "Authorization", "client_secret", "private_key"):
        assert redact.is_secret_field(name), name
    for name in ("signed", "signed_by", "author", "authors", "key", "keyword", "design", "passenger", "tokenizer",
                 "monkey", "email_signature"):
        assert not redact.is_secret_field(name), name
    deep: object = "x"
    for _ in range(300):
        deep = {"a": deep}
    redact.redact_fields(deep)  # cut, not a RecursionError


def test_url_passwords_and_remembered_secrets_are_hidden_in_text() -> None:
    assert redact.hide_url_password("smtp://u:p@ss@h:25, imaps://x:y@z/INBOX") == "smtp://u:***@h:25, imaps://x:***@z/INBOX"
    assert redact.hide_url_password("beanstalk://a:11300,beanstalk://b:11300") == "beanstalk://a:11300,beanstalk://b:11300"
    assert redact.hide_url_password("host=db password=hunter22 user=x") == "host=db password=*** user=x"
    settings = Settings(secret="long-signing-secret", smtp_url="smtp://u:url-pass-1@relay.example:25")
    try:
        redact.remember(settings)
        assert redact.text("bad sig with long-signing-secret; pw url-pass-1") == "bad sig with (hidden); pw (hidden)"
        assert redact.shown_setting("web_password", "abc") == "(set)"
    finally:
        redact.forget()


def test_host_rules() -> None:
    rules = host_rules(Settings(web_hosts="console.example.org,Other.Example:8443"), "127.0.0.1", 8025)
    for host in ("127.0.0.1:8025", "localhost:8025", "[::1]:8025", "console.example.org", "console.example.org:1",
                 "other.example:8443"):
        assert host_allowed(rules, host), host
    for host in ("", "127.0.0.1", "localhost:8026", "evil.example:8025", "other.example:8025", "[::1", "a b:8025",
                 "localhost.:8025", "127.0.0.1:8025:1", "localhost:0x1f61"):
        assert not host_allowed(rules, host), host
    assert split_host("[2001:db8::1]:8025") == ("[2001:db8::1]", 8025) and split_host("[zz::]") is None


def test_the_login_throttle_doubles_each_wait_and_forgets_a_good_login() -> None:
    now = [100.0]
    t = LoginThrottle(base=1, longest=8, clients=2, clock=lambda: now[0])
    assert t.failed("a") == (1, 1) and t.wait("a") == 1 and t.wait("b") == 0
    now[0] += 1
    assert t.failed("a") == (2, 2)
    now[0] += 2
    assert t.failed("a") == (3, 4) and t.failed("a") == (4, 8) and t.failed("a") == (5, 8)
    t.succeeded("a")
    assert t.wait("a") == 0 and t.failed("a") == (1, 1)
    t.failed("b"), t.failed("c")  # at most 2 clients remembered: "a" is forgotten
    assert t.wait("a") == 0 and t.wait("c") > 0


def test_the_request_log_masks_a_searched_address(settings: Settings, console: Console) -> None:
    assert get(console.port, "/log?q=Zo%C3%AB+%3Czoe%40example.com%3E")[0] == 200
    lines = [json.loads(line) for line in stop_and_log(console).splitlines() if '"web request"' in line]
    assert any(e["path"] == "/log?q=Zoë <z***@example.com>" and e["status"] == 200 for e in lines), lines


def test_a_malformed_address_is_masked_in_the_worker_log_and_every_page(settings: Settings, console: Console) -> None:
    """The real worker buries jobs for malformed recipients; neither its log lines nor any
    console page shows them unmasked."""
    from producer.client import connect

    bodies = [b'{"v":2,"kind":"mail","id":"bad:1","template":"welcome","to":[{"address":"bad address@@example.com"}],'
              b'"context":{"name":"x"}}',
              b'{"v":2,"kind":"mail","id":"bad:2","template":"welcome","to":["bad address@@example.com"],'
              b'"context":{"name":"x"}}',
              b'{"v":2,"kind":"mail","id":"bad:3 ann b@@example.com","template":"welcome",'
              b'"to":[{"address":"\\"bad address\\"@@example.com"}],"context":{"name":"x"}}']
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use("mail.normal")
        ids = [c.put(b) for b in bodies]
    proc = beanmail("worker", "--burst", env=bare_env(settings))
    out = proc.stdout + proc.stderr
    assert all(job_state(settings, j) == "buried" for j in ids), out
    assert "address@@" not in out and "bad address" not in out, out
    pages = ["/buried", "/log", "/log?q=bad:1", "/log?q=bad:2"] + [f"/job/{j}" for j in ids]
    for path in pages:
        status, page, _ = get(console.port, path)
        assert status == 200, (path, page[:300])
        assert "address@@" not in page and "bad address" not in page, (path, page)
    assert "b***@example.com" in get(console.port, "/buried")[1]
