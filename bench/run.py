"""`make bench`: the scenarios of the performance issue against real servers started here
(beanstalkd with a binlog, Postfix's smtp-sink), one JSON line per scenario on stdout.

    python bench/run.py [--scale 1.0] [--only relay,enqueue,outbox,...]

--scale multiplies every job count (`make bench-smoke` runs 0.02 of it in seconds). Figures on a
small noisy machine vary run to run; compare ratios from one run, e.g. relay against raw-limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer import Notifier  # noqa: E402
from producer.client import connect  # noqa: E402
from tests.servers import Beanstalkd, free_port, port_open, wait_until, which  # noqa: E402
from tests.servers import SmtpSink as TestSink  # noqa: E402

BIN = Path(sys.executable).parent
CONTEXT = {
    "name": "Zoë", "project": "acme", "count": 3, "settings_url": "https://acme.example/settings/notifications",
    "items": [
        {"title": "Login fails when the password has an umlaut", "author": "ann", "url": "https://acme.example/issues/1",
         "summary": "Fixed in 1.2, please verify on staging before we close it."},
        {"title": "Dark mode", "author": "bob", "url": "https://acme.example/issues/2",
         "summary": "Design review on Thursday; mockups attached to the issue."},
        {"title": "Export to CSV", "author": "cat", "url": "https://acme.example/issues/3",
         "summary": "Merged; release notes updated and docs linked from the dashboard."},
    ],
}
MESSAGE_BYTES = 1900  # what the bench template renders to; smtp-source sends the same size
_started: list[Any] = []  # every server and worker a scenario starts, stopped even when it fails


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


_figures: dict[str, dict[str, Any]] = {}


def emit(scenario: str, **figures: Any) -> None:
    _figures[scenario] = figures
    print(json.dumps({"scenario": scenario, **figures}), flush=True)


def SmtpSink(delay: int = 0, expect: int | None = None, host: str = "127.0.0.1") -> TestSink:
    """The tests' smtp-sink, without message dumps: -m 1024 sessions, optionally slow or counting."""
    options = ["-m", "1024", *(["-w", str(delay)] if delay else []), *(["-M", str(expect)] if expect else [])]
    sink = TestSink(*options, host=host, dump=False, backlog=1024)
    _started.append(sink)
    return sink


def proc_stat(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a process from /proc."""
    try:
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss_kb / 1024, cpu
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return float("nan"), float("nan")


class Workers:
    """W `beanmail worker` processes with the environment supervisord would give them."""

    def __init__(self, tmp: Path, beanstalk_url: str, smtp_port: int, count: int, *, threads: int = 1,
                 command: str = "worker", tubes: str | None = None, extra: dict[str, str] | None = None) -> None:
        self.env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C",
                    "BEANMAIL_BEANSTALK_URL": beanstalk_url,
                    "BEANMAIL_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=off",
                    "BEANMAIL_TEMPLATES": str(ROOT / "bench" / "templates"),
                    "BEANMAIL_STORE": str(tmp / "store.sqlite3"), "BEANMAIL_FROM": "Bench <bench@beanmail.example>",
                    "BEANMAIL_CONCURRENCY": str(threads), **(extra or {})}
        args = [str(BIN / "beanmail"), command] + (["--tubes", tubes] if tubes else [])
        self.logs = [tmp / f"{command}-{i}-{time.monotonic_ns()}.log" for i in range(count)]
        self.procs = [subprocess.Popen(args, env=self.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
                      for log in self.logs]
        _started.append(self)
        try:
            wait_until(lambda: all(b'"connected"' in log.read_bytes() for log in self.logs), 30, "workers to connect")
        except TimeoutError:
            self.stop()
            raise RuntimeError("workers did not start:\n" + "\n".join(log.read_text()[-2000:] for log in self.logs))
        self.rss_start = [proc_stat(p.pid)[0] for p in self.procs]

    @property
    def first_connected(self) -> float:
        """When the first process could reserve (Unix time, from its log): with jobs queued in
        advance they start work before all processes are up, so timing starts here."""
        stamps = []
        for log in self.logs:
            for line in log.read_bytes().splitlines():
                if line.startswith(b"{") and b'"event": "connected"' in line:
                    ts = json.loads(line)["timestamp"]
                    stamps.append(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
                    break
        return min(stamps)

    def usage(self) -> tuple[float, float]:
        stats = [proc_stat(p.pid) for p in self.procs]
        return max(s[0] for s in stats), sum(s[1] for s in stats)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            p.wait(60)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for log in self.logs:
            for line in log.read_bytes().splitlines():
                if line.startswith(b"{") and b'"event": "job"' in line:
                    out.append(json.loads(line))
        return out


def stack(tmp: Path) -> Beanstalkd:
    b = Beanstalkd(tmp / f"beanstalkd-{time.monotonic_ns()}")
    _started.append(b)
    return b.start()


def ready_jobs(url: str, tube: str) -> int:
    with connect(url, encoding=None) as c:
        return int(c.stats_tube(tube)["current-jobs-ready"]) if tube in c.tubes() else 0


# -- scenarios ------------------------------------------------------------------------------------

def relay(tmp: Path, n: int, w: int, threads: int = 1) -> None:
    b = stack(tmp)
    notifier = Notifier(b.url)
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT, priority="bulk")
    sink = SmtpSink(expect=n)
    workers = Workers(tmp, b.url, sink.port, w, threads=threads)
    sink.wait(timeout=3600)
    seconds = time.time() - workers.first_connected
    rss_end, cpu = workers.usage()
    workers.stop()
    ages = [e["age_ms"] for e in workers.events() if e.get("outcome") == "sent"]
    emit("relay", messages=n, workers=w, threads=threads, seconds=round(seconds, 2), messages_per_s=round(n / seconds),
         latency_ms_p50=round(pct(ages, 50)), latency_ms_p99=round(pct(ages, 99)),
         rss_mb_start=round(max(workers.rss_start), 1), rss_mb_end=round(rss_end, 1),
         cpu_seconds=round(cpu, 2), note="latency includes the wait behind the pre-queued backlog")
    b.stop()


def relay_aiosmtpd(tmp: Path, n: int) -> None:
    """One worker into aiosmtpd in its own process: the server the tests use (no PIPELINING)."""
    b = stack(tmp)
    notifier = Notifier(b.url)
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
                               "-l", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open("127.0.0.1", port), 10, "aiosmtpd")
    workers = Workers(tmp, b.url, port, 1)

    def drained() -> bool:
        with connect(b.url, encoding=None) as c:
            s = c.stats_tube("mail.normal")
            return s["current-jobs-ready"] == 0 and s["current-jobs-reserved"] == 0
    wait_until(drained, 3600, "the queue to drain")
    seconds = time.time() - workers.first_connected
    workers.stop()
    server.kill()
    emit("relay-aiosmtpd", messages=n, workers=1, seconds=round(seconds, 2), messages_per_s=round(n / seconds))
    b.stop()


def deleted(url: str) -> int:
    with connect(url, encoding=None) as c:
        return int(c.stats()["cmd-delete"])


def rss_over_a_run(tmp: Path, n: int, w: int) -> None:
    """Worker memory while n messages go through (1,000,000 at full size): producers keep the
    queue fed while the workers drain it; RSS sampled every 5% of the run."""
    b = stack(tmp)
    notifier = Notifier(b.url)
    sink = SmtpSink(expect=n)
    workers = Workers(tmp, b.url, sink.port, w)
    samples: list[tuple[int, float]] = []
    step = max(1, n // 20)
    started = time.perf_counter()
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT, priority="bulk")
        if i % step == step - 1:
            samples.append((deleted(b.url), workers.usage()[0]))
    while sink.proc.poll() is None:
        samples.append((deleted(b.url), workers.usage()[0]))
        time.sleep(5)
    sink.wait(timeout=3600)
    seconds = time.perf_counter() - started
    samples.append((n, workers.usage()[0]))
    workers.stop()
    warm = [rss for done, rss in samples if done >= n // 10] or [samples[-1][1]]
    emit("rss-over-a-run", messages=n, workers=w, seconds=round(seconds, 1),
         rss_mb_start=round(max(workers.rss_start), 1), rss_mb_after_10pct=round(warm[0], 1),
         rss_mb_end=round(samples[-1][1], 1), rss_mb_growth_after_10pct=round(max(warm) - min(warm), 1),
         samples=[(done, round(rss, 1)) for done, rss in samples])
    b.stop()


def enqueue(tmp: Path, n: int) -> None:
    b = stack(tmp)
    notifier = Notifier(b.url)
    notifier.notify("bench", "warm@example.com", CONTEXT)
    costs = []
    for i in range(n):
        t = time.perf_counter_ns()
        notifier.notify("bench", f"user{i}@example.com", CONTEXT, key=f"order:{i}")
        costs.append((time.perf_counter_ns() - t) / 1000)
    emit("enqueue", calls=n, us_p50=round(pct(costs, 50), 1), us_p99=round(pct(costs, 99), 1),
         us_mean=round(statistics.fmean(costs), 1), calls_per_s=round(n / (sum(costs) / 1e6)))
    b.stop()


def slow_receivers(tmp: Path, n: int, w: int, threads: int, delay: int) -> None:
    b = stack(tmp)
    notifier = Notifier(b.url)
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT)
    sink = SmtpSink(delay=delay, expect=n)
    workers = Workers(tmp, b.url, sink.port, w, threads=threads)
    sink.wait(timeout=3600)
    seconds = time.time() - workers.first_connected
    rss_end, cpu = workers.usage()
    workers.stop()
    concurrency = w * threads
    ideal = concurrency / delay
    # Postfix's smtp-source (C, one process) against the same kind of sink, as many sessions, same
    # run: what this sink lets any client reach
    raw_n = min(n, concurrency * 10)
    raw_sink = SmtpSink(delay=delay)
    started = time.perf_counter()
    subprocess.run([which("smtp-source"), "-s", str(concurrency), "-l", str(MESSAGE_BYTES), "-m", str(raw_n), "-c",
                    "-f", "bench@beanmail.example", "-t", "user@example.com", f"127.0.0.1:{raw_sink.port}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=3600)
    raw_fraction = raw_n / (time.perf_counter() - started) / ideal
    emit("slow-receivers", messages=n, workers=w, concurrency=threads, sessions=concurrency, delay_s=delay,
         seconds=round(seconds, 2), messages_per_s=round(n / seconds, 1), ideal_per_s=ideal,
         fraction_of_ideal=round(n / seconds / ideal, 3), smtp_source_fraction_of_ideal=round(raw_fraction, 3),
         rss_mb_start=round(max(workers.rss_start), 1), rss_mb_end=round(rss_end, 1), cpu_seconds=round(cpu, 2))
    b.stop()


def urgent_under_load(tmp: Path, backlog: int, urgent: int, w: int) -> None:
    b = stack(tmp)
    notifier = Notifier(b.url)
    for i in range(backlog):
        notifier.notify("bench", f"bulk{i}@example.com", CONTEXT, priority="bulk")
    sink = SmtpSink()
    workers = Workers(tmp, b.url, sink.port, w)
    wait_until(lambda: ready_jobs(b.url, "mail.bulk") < backlog - 200, 60, "the backlog to drain")
    for i in range(urgent):
        notifier.notify("bench", f"urgent{i}@example.com", CONTEXT, priority="urgent")
        time.sleep(0.02)  # urgent mail arrives over time, not as a block
    wait_until(lambda: sum(1 for e in workers.events() if e.get("tube") == "mail.urgent") >= urgent, 120,
               "the urgent mail")
    left = ready_jobs(b.url, "mail.bulk")
    workers.stop()
    sink.stop()
    ages = [e["age_ms"] for e in workers.events() if e.get("tube") == "mail.urgent"]
    emit("urgent-under-load", backlog=backlog, bulk_left_when_done=left, urgent=urgent, workers=w,
         urgent_ms_p50=round(pct(ages, 50), 1), urgent_ms_p99=round(pct(ages, 99), 1))
    b.stop()


def fanout(tmp: Path, n: int, w: int) -> None:
    b = stack(tmp)
    notifier = Notifier(b.url)
    sink = SmtpSink(expect=n)
    workers = Workers(tmp, b.url, sink.port, w)
    fan = Workers(tmp, b.url, sink.port, 1, command="fanout")
    started = time.perf_counter()
    chunks = notifier.mailout("bench", (f"r{i}@example.com" for i in range(n)), CONTEXT, key="bench-mailout")
    mailout_s = time.perf_counter() - started

    def fanned() -> bool:
        with connect(b.url, encoding=None) as c:
            return "mail.bulk" in c.tubes() and int(c.stats_tube("mail.bulk")["total-jobs"]) >= n
    wait_until(fanned, 600, "fan-out")
    fanned_s = time.perf_counter() - started
    sink.wait(timeout=3600)
    seconds = time.perf_counter() - started
    workers.stop()
    fan.stop()
    emit("fanout", recipients=n, chunks=len(chunks), mailout_call_s=round(mailout_s, 3),
         fanout_recipients_per_s=round(n / fanned_s), seconds_to_last_accepted=round(seconds, 2),
         messages_per_s=round(n / seconds))
    b.stop()


def mailout_memory(tmp: Path, n: int) -> None:
    """Peak memory of one mailout() call over a generator of n recipients, in a fresh process."""
    b = stack(tmp)
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from producer import Notifier
def hwm():  # the peak RSS of this process since exec (ru_maxrss would include the parent's at fork)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
n = Notifier({b.url!r})
n.notify("bench", "warm@example.com", {{}})
before = hwm()
t = time.perf_counter()
chunks = n.mailout("bench", (f"r{{i}}@example.com" for i in range({n})), {{"project": "acme"}}, key="big")
print(before, hwm(), len(chunks), time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, chunks, seconds = int(out[0]), int(out[1]), int(out[2]), float(out[3])
    emit("mailout-memory", recipients=n, chunks=chunks, seconds=round(seconds, 2),
         rss_mb_before=round(before / 1024, 1), rss_mb_peak=round(after / 1024, 1),
         rss_mb_growth=round((after - before) / 1024, 1))
    b.stop()


def mx_rate(tmp: Path, n: int, w: int, limit: float) -> None:
    """Direct delivery to one domain (dnsmasq answers its MX, smtp-sink on 127.0.0.2 is the MX),
    with the per-domain limit off and then on."""
    from tests.servers import Dnsmasq

    dns = Dnsmasq(tmp / "dns", ["mx-host=bench.mx.example,mx.bench.mx.example,10",
                                "host-record=mx.bench.mx.example,127.0.0.2"]).start()
    try:
        for rate in (0.0, limit):
            b = stack(tmp)
            notifier = Notifier(b.url)
            for i in range(n):
                notifier.notify("bench", f"user{i}@bench.mx.example", CONTEXT)
            sink = SmtpSink(expect=n, host="127.0.0.2")
            port = sink.port
            workers = Workers(tmp, b.url, port, w, extra={
                "BEANMAIL_TRANSPORT": "mx", "BEANMAIL_DNS": dns.address, "BEANMAIL_MX_PORT": str(port),
                "BEANMAIL_RATE_LIMITS": f"bench.mx.example={rate}", "BEANMAIL_STORE": str(tmp / f"mx-{rate}.sqlite3")})
            sink.wait(timeout=3600)
            seconds = time.time() - workers.first_connected
            workers.stop()
            emit("mx-one-domain", messages=n, workers=w, limit_per_s=rate or "off", seconds=round(seconds, 2),
                 messages_per_s=round(n / seconds, 1))
            b.stop()
    finally:
        dns.stop()


def mx_internet(tmp: Path, per_domain: int, w: int, domains: int = 200, concurrency: int = 200,
                greylist: bool = True) -> None:
    """Direct MX to a simulated internet (tests/internet.py): `domains` domains, each MX host on its
    own loopback address answering the end of data after 1 s; 15 greylist a recipient's first try,
    10 close a session after 5 messages with 421. One connection per domain per process, so a
    domain needs per_domain / processes seconds at best, and a greylisting one the greylist delay
    more (its recipients' second tries cannot start before it): ``ideal_seconds``, the run's
    lower bound; ``fraction_of_ideal`` is it over the time taken. ``ideal_per_s`` (domains x
    processes) ignores greylisting: ``fraction_of_ideal_without_greylisting`` is against that."""
    from tests.internet import SimulatedInternet, domain

    greylisting = min(15, domains // 10) if greylist else 0
    greylist_delay = 5.0  # BEANMAIL_GREYLIST_DELAY below
    internet = SimulatedInternet(tmp / "internet", domains, delay=1.0, greylist=greylisting,
                                 close_after_domains=min(10, domains // 20), close_after=5).start()
    _started.append(internet)
    b = stack(tmp)
    notifier = Notifier(b.url)
    everyone = [f"u{n}@{domain(i)}" for n in range(per_domain) for i in range(domains)]
    for address in everyone:
        notifier.notify("bench", address, CONTEXT, key=f"net:{address}")
    workers = Workers(tmp, b.url, internet.port, w, threads=concurrency, extra={
        "BEANMAIL_TRANSPORT": "mx", "BEANMAIL_DNS": internet.dns.address, "BEANMAIL_MX_PORT": str(internet.port),
        "BEANMAIL_MX_CONNECTIONS_PER_DOMAIN": "1",
        # the simulated hosts take a greylisted recipient's second try at once; real ones want minutes
        "BEANMAIL_GREYLIST_DELAY": str(int(greylist_delay))})
    wait_until(lambda: deleted(b.url) >= len(everyone), 3600, "every message of the simulated internet")
    seconds = time.time() - workers.first_connected
    rss_end, _ = workers.usage()
    workers.stop()
    _started.remove(internet)
    report = internet.stop()
    accepted = report.get("accepted", {})
    ideal = domains * w
    ideal_seconds = per_domain / w * 1.0 + (greylist_delay if greylisting else 0.0)
    emit("mx-internet", messages=len(everyone), domains=domains, workers=w, concurrency=concurrency,
         seconds=round(seconds, 2), messages_per_s=round(len(everyone) / seconds, 1),
         ideal_seconds=round(ideal_seconds, 2), fraction_of_ideal=round(ideal_seconds / seconds, 3),
         ideal_per_s=ideal, fraction_of_ideal_without_greylisting=round(len(everyone) / seconds / ideal, 3),
         delivered=sum(accepted.values()), duplicates=sum(accepted.values()) - len(accepted),
         peak_sessions_per_domain=max(report.get("peak_sessions", {}).values(), default=0),
         greylisted=report.get("greylisted"), closed_421=report.get("closed_421"),
         rss_mb_end=round(rss_end, 1))
    b.stop()


_DJANGO_MAILER = """
import sys, time
sys.path.insert(0, {root!r})
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["mailer"], DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}},
    EMAIL_BACKEND="mailer.backend.DbBackend", MAILER_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    EMAIL_HOST="127.0.0.1", EMAIL_PORT={port}, EMAIL_USE_TLS=False, USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField")
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from bench.run import rendered_bench_message
from mailer import send_html_mail
from mailer.engine import send_all
subject, text, html = rendered_bench_message()
for i in range({n}):  # queued as a Django view would: rendered, one row each
    send_html_mail(subject, text, html, "Bench <bench@beanmail.example>", [f"user{{i}}@example.com"])
started = time.perf_counter()
send_all()  # what `manage.py send_mail` runs: one process, one SMTP connection
print(time.perf_counter() - started)
"""


# -- DKIM: what a signature costs (its own scenarios; worker/dkim.py) -------------------------------

DKIM_DOMAIN = "beanmail.example"  # the bench's From domain, so every message is signed


def _dkim_keys(tmp: Path) -> dict[str, tuple[str, str, str]]:
    """An RSA-2048 and an Ed25519 key as `beanmail dkim keygen` writes them: algorithm ->
    (selector, key file, TXT record)."""
    from worker.dkim import keygen

    keys = {}
    for algorithm, selector in (("rsa", "bench-rsa"), ("ed25519", "bench-ed")):
        path = str(tmp / f"{selector}.pem")
        keys[algorithm] = (selector, path, keygen(path, algorithm=algorithm))
    return keys


def _dkim_env(selector: str, path: str) -> dict[str, str]:
    return {"BEANMAIL_DKIM_KEY": path, "BEANMAIL_DKIM_SELECTOR": selector, "BEANMAIL_DKIM_DOMAIN": DKIM_DOMAIN}


def _relay_once(tmp: Path, n: int, w: int, threads: int, extra: dict[str, str]) -> dict[str, float]:
    """The relay scenario's run (n messages queued in advance, w workers, smtp-sink), not printed;
    in a folder of its own (a store of its own)."""
    tmp = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
    b = stack(tmp)
    notifier = Notifier(b.url)
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT, priority="bulk")
    notifier.close()
    sink = SmtpSink(expect=n)
    workers = Workers(tmp, b.url, sink.port, w, threads=threads, extra=extra)
    cpu_at_start, done_at_start = workers.usage()[1], deleted(b.url)  # start-up's CPU is no message's
    sink.wait(timeout=3600)
    seconds = time.time() - workers.first_connected
    cpu = workers.usage()[1] - cpu_at_start
    workers.stop()
    b.stop()
    return {"messages_per_s": round(n / seconds), "cpu_us_per_message": round(cpu / max(1, n - done_at_start) * 1e6)}


def relay_tls(tmp: Path, n: int, w: int, threads: int = 1) -> None:
    """STARTTLS + AUTH PLAIN (certificate verified) to aiosmtpd in a process of its own, beside
    the same aiosmtpd in clear in the same run: each one's msg/s, their ratio, and messages per
    TLS session (sessions kept and reused, not one handshake per message)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    figures: dict[str, dict[str, float]] = {}
    for mode in ("plain", "tls"):
        run = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{mode}-"))
        b = stack(run)
        notifier = Notifier(b.url)
        for i in range(n):
            notifier.notify("bench", f"user{i}@example.com", CONTEXT, priority="bulk")
        notifier.close()
        port, counts = free_port(), run / "counts.json"
        server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "tls_sink.py"), "--port", str(port),
                                   "--counts", str(counts), *(["--tls", str(cert), str(key)] if mode == "tls" else [])],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open("127.0.0.1", port) and counts.exists(), 30, "the TLS sink")
            url = (f"smtp://bench:secret@127.0.0.1:{port}?starttls=required" if mode == "tls"
                   else f"smtp://127.0.0.1:{port}?starttls=off")
            workers = Workers(run, b.url, port, w, threads=threads,
                              extra={"BEANMAIL_SMTP_URL": url, "BEANMAIL_SMTP_CAFILE": str(cert)})
            wait_until(lambda: json.loads(counts.read_text())["messages"] >= n, 3600, f"{n} messages ({mode})")
            seconds = time.time() - workers.first_connected
            workers.stop()
        finally:
            server.terminate()
            server.wait(30)
        got = json.loads(counts.read_text())
        figures[mode] = {"messages_per_s": round(n / seconds), "sessions": got["sessions"],
                         "tls_messages": got["tls_messages"]}
        b.stop()
    tls, plain = figures["tls"], figures["plain"]
    emit("relay-tls", messages=n, workers=w, threads=threads, plain_messages_per_s=plain["messages_per_s"],
         tls_messages_per_s=tls["messages_per_s"], ratio=round(tls["messages_per_s"] / plain["messages_per_s"], 2),
         tls_sessions=tls["sessions"], messages_per_tls_session=round(n / max(1, tls["sessions"]), 1),
         every_message_over_tls=tls["tls_messages"] == n,
         note="aiosmtpd (no PIPELINING) in its own process; STARTTLS required, AUTH PLAIN, certificate verified")


def _check_signed(tmp: Path, selector: str, path: str, record: str) -> None:
    """One message through a worker with this key, verified by dkimpy against the key's record:
    the figures are those of signed mail, not of a setting that did nothing."""
    import dkim

    tmp = Path(tempfile.mkdtemp(dir=tmp, prefix="check-"))
    b = stack(tmp)
    notifier = Notifier(b.url)
    notifier.notify("bench", "check@example.com", CONTEXT, priority="bulk")
    notifier.close()
    sink = TestSink(dump=True)
    _started.append(sink)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "BEANMAIL_BEANSTALK_URL": b.url,
           "BEANMAIL_SMTP_URL": sink.url, "BEANMAIL_TEMPLATES": str(ROOT / "bench" / "templates"),
           "BEANMAIL_STORE": str(tmp / "store.sqlite3"), "BEANMAIL_FROM": f"Bench <bench@{DKIM_DOMAIN}>",
           **_dkim_env(selector, path)}
    subprocess.run([str(BIN / "beanmail"), "worker", "--burst"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(sink.messages()) == 1, 30, "the signed check message")
    message = sink.messages()[0]
    name = f"{selector}._domainkey.{DKIM_DOMAIN}".encode()
    if not dkim.verify(message, dnsfunc=lambda q, timeout=5: record.encode() if q.rstrip(b".") == name else None):
        raise RuntimeError(f"relay-dkim: the message signed with {selector} does not verify:\n{message[:2000]!r}")
    sink.stop()
    b.stop()


def relay_dkim(tmp: Path, n: int, w: int, threads: int = 1) -> None:
    """The relay scenario unsigned, then every message signed with RSA-2048, then with Ed25519
    (keys as `beanmail dkim keygen` writes them), in one run: each signed figure beside the
    unsigned one, with their ratio."""
    keys = _dkim_keys(tmp)
    for selector, path, record in keys.values():
        _check_signed(tmp, selector, path, record)
    unsigned = _relay_once(tmp, n, w, threads, {})
    for algorithm, (selector, path, _) in keys.items():
        signed = _relay_once(tmp, n, w, threads, _dkim_env(selector, path))
        emit(f"relay-dkim-{algorithm}", messages=n, workers=w, threads=threads,
             messages_per_s=signed["messages_per_s"], unsigned_messages_per_s=unsigned["messages_per_s"],
             ratio=round(signed["messages_per_s"] / unsigned["messages_per_s"], 2),
             cpu_us_per_message=signed["cpu_us_per_message"],
             unsigned_cpu_us_per_message=unsigned["cpu_us_per_message"])


def dkim_cpu(tmp: Path, n: int) -> None:
    """CPU per message in one process, no servers: render + MIME (the bench template), the sign
    step alone (RSA-2048, Ed25519, both), and the three together; dkimpy's own sign for scale."""
    import dkim
    from cryptography.hazmat.primitives import serialization

    from producer.envelope import Recipient
    from worker import mime
    from worker.dkim import Signer, SigningKey
    from worker.render import Renderer

    renderer = Renderer(str(ROOT / "bench" / "templates"))
    sender = mime.sender_address(f"Bench <bench@{DKIM_DOMAIN}>")
    recipient = Recipient("user@example.com")
    headers = {"Feedback-ID": f"bench:-:bulk:{DKIM_DOMAIN}"}

    def build() -> bytes:
        parts = renderer.render("bench", dict(CONTEXT, recipient={"address": recipient.address, "name": ""}))
        return mime.build(parts, sender, recipient, headers)

    keys = {algorithm: SigningKey.from_file(path, selector) for algorithm, (selector, path, _) in _dkim_keys(tmp).items()}
    signers = {"rsa": Signer(DKIM_DOMAIN, [keys["rsa"]]), "ed25519": Signer(DKIM_DOMAIN, [keys["ed25519"]]),
               "rsa+ed25519": Signer(DKIM_DOMAIN, [keys["rsa"], keys["ed25519"]])}
    message = build()

    def us(call: Callable[[], object], count: int) -> float:
        """CPU µs per call: the least of 5 rounds (a shared machine only ever adds)."""
        call()
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(count):
                call()
            best = min(best, (time.process_time() - started) / count)
        return round(best * 1e6, 1)

    figures: dict[str, float] = {"render_mime_us": us(build, n)}
    for name, signer in signers.items():
        figures[f"sign_{name}_us"] = us(lambda: signer.sign(message), n)
        figures[f"render_mime_sign_{name}_us"] = us(lambda: signer.sign(build()), n)
    pem = keys["rsa"].private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                            serialization.NoEncryption())
    figures["dkimpy_sign_rsa_us"] = us(lambda: dkim.sign(message, b"bench-rsa", DKIM_DOMAIN.encode(), pem,
                                                         canonicalize=(b"relaxed", b"relaxed")), max(5, n // 50))
    emit("dkim-cpu", message_bytes=len(message), **figures)


def rendered_bench_message() -> tuple[str, str, str]:
    """The bench template rendered once with the bench context: what a Django view would queue."""
    from worker.render import Renderer

    parts = Renderer(str(ROOT / "bench" / "templates")).render("bench", dict(CONTEXT, recipient={
        "address": "user@example.com", "name": ""}))
    return parts.subject, parts.text, parts.html


def django_mailer(tmp: Path, n: int) -> None:
    """django-mailer 2.x, the usual Django answer to "no mail in the request": rows in the
    application's database, sent by `manage.py send_mail` (one process, one connection)."""
    sink = SmtpSink(expect=n)
    code = _DJANGO_MAILER.format(root=str(ROOT), db=str(tmp / "django.sqlite3"), port=sink.port, n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"django-mailer scenario failed:\n{out.stderr[-3000:]}")
    sink.wait(timeout=60)
    seconds = float(out.stdout.split()[-1])
    emit("django-mailer", messages=n, processes=1, seconds=round(seconds, 2), messages_per_s=round(n / seconds))


def raw_limit(tmp: Path, n: int, w: int) -> None:
    sink = SmtpSink()
    started = time.perf_counter()
    subprocess.run([which("smtp-source"), "-s", str(w * 4), "-l", str(MESSAGE_BYTES), "-m", str(n), "-c",
                    "-f", "bench@beanmail.example", "-t", "user@example.com", f"127.0.0.1:{sink.port}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=3600)
    seconds = time.perf_counter() - started
    sink.stop()
    emit("raw-limit", messages=n, sessions=w * 4, message_bytes=MESSAGE_BYTES, seconds=round(seconds, 2),
         messages_per_s=round(n / seconds))


def outbox(tmp: Path, n: int, backlog: int, rate: float = 200.0) -> None:
    """Commit -> put latency of the transactional outbox on PostgreSQL: each transaction writes its
    job into beanmail_outbox (hooks.transaction(outbox=True)) at ``rate`` commits a second; the
    relay (`beanmail outbox run`, woken by NOTIFY) puts it; a reader here takes the job off
    beanstalkd. Latency: from the commit's return to the job's reservation, both timed here.
    Before it, ``backlog`` rows committed at once: how fast one relay drains them."""
    import threading

    import greenstalk
    import psycopg

    from producer import envelope as env
    from producer import outbox as outbox_table
    from producer.hooks import transaction
    from tests.servers import Postgres

    b = stack(tmp)
    pg = Postgres().start()
    _started.append(pg)
    url = pg.create_database("bench")
    with psycopg.connect(url) as conn:
        outbox_table.create_table(conn, "postgresql")
    log = tmp / "relay.log"
    relay_env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "BEANMAIL_BEANSTALK_URL": b.url}
    relay_proc = subprocess.Popen([str(BIN / "beanmail"), "outbox", "run", "--db", url], env=relay_env,
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    class Stop:
        def stop(self) -> None:
            relay_proc.terminate()
            relay_proc.wait(30)
    _started.append(Stop())
    wait_until(lambda: b"outbox relay started" in log.read_bytes(), 30, "the relay to start")
    notifier = Notifier(b.url)
    # throughput first: a backlog committed at once, drained by the running relay
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as reader_conn:
        with transaction(conn, notifier, outbox=True) as mail:
            for i in range(backlog):
                mail.notify("bench", f"user{i}@example.com", CONTEXT, key=f"backlog:{i}")
        t0 = time.perf_counter()
        wait_until(lambda: not reader_conn.execute("SELECT 1 FROM beanmail_outbox LIMIT 1").fetchone(), 300,
                   "the relay to drain the backlog")
        drain_s = time.perf_counter() - t0
    with connect(b.url, encoding=None) as c:  # out of the latency reader's way
        c.watch("mail.normal")
        for _ in range(backlog):
            c.delete(c.reserve(10))
    arrived: dict[str, float] = {}

    def take() -> None:
        with connect(b.url, encoding=None) as c:
            c.watch("mail.normal")
            while len(arrived) < n:
                try:
                    job = c.reserve(2)
                except greenstalk.TimedOutError:
                    continue
                arrived[env.decode(job.body).id] = time.perf_counter()
                c.delete(job)
    reader = threading.Thread(target=take, daemon=True)
    reader.start()
    committed: dict[str, float] = {}
    commit_us = []
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        conn.commit()
        start = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            t = time.perf_counter()
            with transaction(conn, notifier, outbox=True) as mail:
                conn.execute("INSERT INTO orders (id) VALUES (%s)", (i,))
                mail.notify("bench", f"user{i}@example.com", CONTEXT, key=f"order:{i}")
            committed[f"order:{i}"] = done = time.perf_counter()
            commit_us.append((done - t) * 1e6)
    reader.join(60)
    lat = [(arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived]
    emit("outbox", commits=n, rate_per_s=rate, arrived=len(lat), ms_p50=round(pct(lat, 50), 2),
         ms_p99=round(pct(lat, 99), 2), ms_max=round(max(lat), 2),
         commit_us_p50=round(pct(commit_us, 50), 1), commit_us_p99=round(pct(commit_us, 99), 1),
         backlog=backlog, backlog_rows_per_s=round(backlog / drain_s))


def events(tmp: Path, n: int, w: int) -> None:
    """Delivery events for n sends: n mails sent by W mail workers with BEANMAIL_EVENTS_URL set
    (each recorded batch queues its message.sent events), then one `beanmail events run` (as
    supervisord runs it) POSTs them, signed, to a local keep-alive HTTP endpoint; timed from its
    first request to its last."""
    import base64 as b64

    from standardwebhooks import Webhook

    from tests.endpoint import Endpoint

    b = stack(tmp)
    endpoint = Endpoint().start()
    secret = "whsec_" + b64.b64encode(os.urandom(32)).decode()
    events_env = {"BEANMAIL_EVENTS_URL": endpoint.url, "BEANMAIL_EVENTS_SECRET": secret,
                  "BEANMAIL_EVENTS_SPOOL": str(tmp / "events.spool")}
    notifier = Notifier(b.url)
    for i in range(n):
        notifier.notify("bench", f"user{i}@example.com", CONTEXT, priority="bulk", key=f"bench:{i}")
    sink = SmtpSink(expect=n)
    workers = Workers(tmp, b.url, sink.port, w, extra=events_env)
    sink.wait(timeout=3600)
    send_seconds = time.time() - workers.first_connected
    workers.stop()
    queued = ready_jobs(b.url, "events")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "BEANMAIL_BEANSTALK_URL": b.url,
           "BEANMAIL_STORE": str(tmp / "store.sqlite3"), **events_env}
    log = tmp / "events-run.log"
    proc = subprocess.Popen([str(BIN / "beanmail"), "events", "run"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    try:
        # smtp-sink -M leaves after n messages, so the last one or two end in doubt: no event for those
        wait_until(lambda: len(endpoint.received) >= queued or proc.poll() is not None, 600, "every event delivered")
        rss, cpu = proc_stat(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    endpoint.stop()
    if len(endpoint.received) < queued:
        raise RuntimeError(f"events run exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    seconds = endpoint.received[-1].at - endpoint.received[0].at  # first request to last: the runner's pace
    for r in endpoint.received[:: max(1, n // 100)]:  # a sample of signatures, checked by the reference library
        Webhook(secret).verify(r.body, r.headers)
    ids = [r.id for r in endpoint.received]
    emit("events", sends=n, workers=w, sends_per_s=round(n / send_seconds), events_queued=queued,
         seconds=round(seconds, 2), events_per_s=round(queued / seconds), unique=len(set(ids)), requests=len(ids),
         connections=endpoint.connections, runner_rss_mb=round(rss, 1), runner_cpu_s=round(cpu, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=1, help="loops per worker process in the relay scenario")
    parser.add_argument("--only", default="relay,django-mailer,enqueue,slow-receivers,urgent-under-load,fanout,raw-limit,"
                                           "rss-over-a-run,"
                                           "mailout-memory,mx-one-domain,mx-internet,relay-aiosmtpd,outbox,"
                                           "relay-dkim,dkim-cpu,events,relay-tls")
    args = parser.parse_args()
    s, w = args.scale, args.workers

    def n(base: int, minimum: int = 20) -> int:
        return max(minimum, int(base * s))
    scenarios: dict[str, Callable[[Path], None]] = {
        "relay": lambda t: relay(t, n(20_000), w, args.threads),
        "relay-aiosmtpd": lambda t: relay_aiosmtpd(t, n(3_000)),
        "enqueue": lambda t: enqueue(t, n(20_000, 200)),
        "slow-receivers": lambda t: slow_receivers(t, n(250 * w * 20, 16 * w), w, 250 if s >= 0.1 else 8, 1),
        "urgent-under-load": lambda t: urgent_under_load(t, n(100_000, 2000), 50 if s >= 0.5 else 10, w),
        "fanout": lambda t: fanout(t, n(100_000, 500), w),
        "raw-limit": lambda t: raw_limit(t, n(20_000), w),
        "django-mailer": lambda t: django_mailer(t, n(4_000)),
        "rss-over-a-run": lambda t: rss_over_a_run(t, n(1_000_000, 5_000), w),
        "mx-one-domain": lambda t: mx_rate(t, n(2_000, 100), w, 50.0),
        "mx-internet": lambda t: mx_internet(t, max(2, int(20 * s)), w, domains=200 if s >= 0.1 else 20),
        "mailout-memory": lambda t: mailout_memory(t, n(1_000_000, 10_000)),
        "outbox": lambda t: outbox(t, n(4_000, 200), n(20_000, 500)),
        "relay-dkim": lambda t: relay_dkim(t, n(10_000), w, args.threads),
        "dkim-cpu": lambda t: dkim_cpu(t, n(2_000)),
        "events": lambda t: events(t, n(10_000, 200), w),
        "relay-tls": lambda t: relay_tls(t, n(3_000), w, args.threads),
    }
    for name in args.only.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"beanmail-bench-{name}-"))
        try:
            scenarios[name](tmp)
        finally:
            while _started:
                _started.pop().stop()
            shutil.rmtree(tmp, ignore_errors=True)
    if "relay" in _figures and "django-mailer" in _figures:  # the ratio the issue asks for, one run
        emit("relay-vs-django-mailer", ratio=round(_figures["relay"]["messages_per_s"]
                                                   / _figures["django-mailer"]["messages_per_s"], 1))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    sys.exit(main())
