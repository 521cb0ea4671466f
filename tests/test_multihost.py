"""The fleet across hosts: three "hosts" made of network namespaces (tests/netns.py), joined by a
bridge in a namespace of its own, with addresses from 198.18.0.0/15 that exist only inside them.

  h1 198.18.0.1   beanstalkd (binlog) + supervisord with the repository's supervisord.conf + a producer
  h2 198.18.0.2   beanstalkd (binlog) + supervisord with the repository's supervisord.conf + a producer
  db 198.18.0.3   PostgreSQL (the fleet's store) + Postfix's smtp-sink (keeps every message)

A mailout of RECIPIENTS recipients and a stream of notifications from the producers on h1 and
h2 are delivered exactly once while h1's beanstalkd is killed (-9) and restarted from its binlog
and h2's workers are disabled, then enabled; `beanmail workers --json` is checked at each step.
The figures are printed on a line starting with FLEET.

Run alone: .venv/bin/pytest tests/test_multihost.py -s   (as root: it makes network namespaces)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import ROOT, VENV_BIN, bare_env
from .netns import Host, Network
from .servers import wait_until, which
from .stack import Supervisor

RECIPIENTS = 20_000  # the mailout
RATE = 15.0  # notifications per second from each producer
BUDGET = 110  # seconds from the first namespace to the last delivery: the test ends within 2 minutes
BEANSTALK_PORT, PG_PORT, SMTP_PORT = 11300, 5432, 2525
MAILOUT_KEY = "fleet:mailout"
WORKER_NAMES = ("mail", "urgent")  # the programs of supervisord.conf that run `beanmail worker`
WORKER_PROGRAMS = tuple(f"beanmail:{name}_" for name in WORKER_NAMES)
HEARTBEAT, LOST_AFTER = 0.5, 10
# loops per worker process and server: a loop mostly waits on the store's round trips (claim,
# suppression, preferences, the message record, the outcome), so more of them keep two cores busy
THREADS = 4


# -- the producer: `python -m tests.test_multihost produce NAME MAILOUT` on a host -------------------

def produce(name: str, mailout: int) -> None:
    """Queues the mailout (if any), then notifications at RATE until stdin closes; one JSON line
    per put on stdout: address, start (wall clock), duration, job id (0: spooled) or error."""
    from producer import Notifier

    notifier = Notifier(os.environ["BEANMAIL_BEANSTALK_URL"], spool="", blobs="")
    out = sys.stdout
    if mailout:
        started = time.perf_counter()
        ids = notifier.mailout("welcome", [f"m{i:05d}@fleet.example" for i in range(mailout)],
                               {"name": "fleet"}, key=MAILOUT_KEY)
        out.write(json.dumps({"mailout": mailout, "chunks": len(ids), "d": time.perf_counter() - started}) + "\n")
        out.flush()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        address = f"{name}-{i:05d}@fleet.example"
        record: dict[str, object] = {"a": address, "t": time.time()}
        started = time.perf_counter()
        try:
            record["id"] = notifier.notify("welcome", address, {"name": address}, key=f"fleet:{address}",
                                           priority="urgent" if i % 10 == 0 else "normal")
        except Exception as exc:  # noqa: BLE001 - counted as lost by the test
            record["error"] = repr(exc)
        record["d"] = time.perf_counter() - started
        out.write(json.dumps(record) + "\n")
        out.flush()
        i += 1
        next_at += 1 / RATE
        stop.wait(max(0.0, next_at - time.monotonic()))  # the pace, and the stop signal
    notifier.close()


# -- the hosts' servers ---------------------------------------------------------------------------

def scratch(prefix: str) -> Path:
    """A folder for a server that writes a lot of small files (smtp-sink's messages, PostgreSQL's
    cluster), on /dev/shm where there is one: quick to write and to remove. Not under pytest's
    tmp_path: only root may enter that, and these servers run as other users."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))


class FleetPostgres:
    """A throw-away cluster as tests/servers.py's Postgres makes it (Debian's binaries, trust
    auth, run as the postgres user), listening on the db host's address."""

    def __init__(self, host: Host) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise FileNotFoundError("PostgreSQL server is not installed: run `make setup-test` (it installs it)")
        self.bin, self.host, self.port = bins[-1].parent, host, PG_PORT
        self.workdir = scratch("beanmail-fleet-pg-")
        self.dir = self.workdir / "pgdata"
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.user_prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.workdir, "postgres")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host.address}:{self.port}/{db}"

    def start(self) -> "FleetPostgres":
        subprocess.run([*self.user_prefix, str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        with open(self.dir / "pg_hba.conf", "a") as hba:
            hba.write("host all all 198.18.0.0/15 trust\n")
        self.host.popen(
            [*self.user_prefix, str(self.bin / "postgres"), "-D", str(self.dir), "-p", str(self.port),
             "-c", f"listen_addresses={self.host.address}", "-c", f"unix_socket_directories={self.dir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300",
             # its dynamic shared memory in the data folder, not /dev/shm: removed with it, even
             # after a kill
             "-c", "dynamic_shared_memory_type=mmap"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.host.port_open(self.port), 30, "PostgreSQL to listen")
        return self

    def stop(self) -> None:
        """A fast shutdown, which removes its shared memory; what is left is killed after."""
        if (self.dir / "postmaster.pid").exists():
            self.host.run([*self.user_prefix, str(self.bin / "pg_ctl"), "stop", "-D", str(self.dir), "-m", "fast",
                           "-w", "-t", "10"], check=False, timeout=20)


class Sink:
    """Postfix's smtp-sink on the db host, one file per message (-d); ``count()`` reads the new
    files since the last call and tells how many times each recipient was delivered. Every job
    of the test has a recipient of its own (its key is ``fleet:<address>``, or the mailout's
    ``fleet:mailout:<address>``), so counting by recipient is counting by key."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dumps = scratch("beanmail-fleet-sink-")
        os.chmod(self.dumps, 0o777)  # smtp-sink writes as nobody
        self.proc = host.popen([which("smtp-sink"), "-u", "nobody", "-d", f"{self.dumps}/%M.",
                                f"{host.address}:{SMTP_PORT}", "256"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.seen: dict[str, list[str]] = {}
        self.delivered: Counter[str] = Counter()
        wait_until(lambda: host.port_open(SMTP_PORT), 10, "smtp-sink to listen")

    @property
    def url(self) -> str:
        return f"smtp://{self.host.address}:{SMTP_PORT}?starttls=off"

    def count(self) -> Counter[str]:
        for entry in os.scandir(self.dumps):
            if entry.name in self.seen:
                continue
            text = Path(entry.path).read_bytes().decode("utf-8", "replace")
            if "\nReceived: " not in text:  # still being written: its recipients next time
                continue
            rcpts = [line.split(":", 1)[1].strip().strip("<>").split(">")[0].lower()
                     for line in text.split("\nReceived: ", 1)[0].splitlines() if line.startswith("X-Rcpt-Args:")]
            self.seen[entry.name] = rcpts
            self.delivered.update(rcpts)
        return self.delivered

    def total(self) -> int:
        return sum(self.count().values())

    def close(self) -> None:
        shutil.rmtree(self.dumps, ignore_errors=True)


class Beanstalkd:
    def __init__(self, host: Host, workdir: Path) -> None:
        self.host = host
        self.binlog = workdir / "binlog"
        self.binlog.mkdir(parents=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"beanstalk://{self.host.address}:{BEANSTALK_PORT}"

    def start(self) -> "Beanstalkd":
        self.proc = self.host.popen([which("beanstalkd"), "-l", self.host.address, "-p", str(BEANSTALK_PORT),
                                     "-b", str(self.binlog)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.host.port_open(BEANSTALK_PORT), 10, f"beanstalkd on {self.host.name} to listen")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no chance to tidy its binlog
        self.proc.wait(10)


class HostSupervisor(Supervisor):
    """tests/stack.py's layout (the repository's supervisord.conf in a scratch folder), with
    supervisord started inside the host's namespace; supervisorctl reaches it by its socket."""

    def __init__(self, host: Host, home: Path, env: dict[str, str]) -> None:
        super().__init__(home, env)
        self.host = host

    def start(self) -> "HostSupervisor":
        """Started, not yet waited for (wait_running): two hosts start side by side."""
        self.host.run([str(VENV_BIN / "supervisord"), "-c", self.conf], env=self.env, timeout=30)
        return self

    def beanmail(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A `beanmail` command run on this host, with its supervisord's environment."""
        return self.host.run([str(VENV_BIN / "beanmail"), *args], env=self.env, cwd=ROOT, check=check)


# -- the fleet --------------------------------------------------------------------------------------

class Fleet:
    def __init__(self, net: Network, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.t0 = time.monotonic()
        self.pg = FleetPostgres(net["db"])
        self.sink: Sink | None = None
        self.beanstalkd = {h: Beanstalkd(net[h], tmp / h / "beanstalkd") for h in ("h1", "h2")}
        self.url = ",".join(b.url for b in self.beanstalkd.values())
        self.sup: dict[str, HostSupervisor] = {}
        self.producers: dict[str, subprocess.Popen] = {}

    def start(self) -> "Fleet":
        self.sink = Sink(self.net["db"])
        for b in self.beanstalkd.values():
            b.start()
        self.pg.start()
        phase(self.t0, "servers up")
        for h in ("h1", "h2"):
            env = bare_env(
                None, BEANMAIL_BEANSTALK_URL=self.url, BEANMAIL_SMTP_URL=self.sink.url, BEANMAIL_STORE=self.pg.dsn(),
                BEANMAIL_HOST_NAME=h, BEANMAIL_FROM="Fleet <noreply@beanmail.example>",
                BEANMAIL_SMTP_TIMEOUT="5", BEANMAIL_TTR="30", BEANMAIL_BACKOFF_BASE="1", BEANMAIL_BACKOFF_MAX="2",
                BEANMAIL_MAX_ATTEMPTS="30", BEANMAIL_HEARTBEAT=str(HEARTBEAT), BEANMAIL_LOST_AFTER=str(LOST_AFTER),
                BEANMAIL_UNSUBSCRIBE_MAILTO="unsubscribe@beanmail.example", BEANMAIL_THREADS=str(THREADS))
            self.sup[h] = HostSupervisor(self.net[h], self.tmp / h / "stack", env)
        for sup in self.sup.values():
            sup.start()
        phase(self.t0, "supervisords started")
        for sup in self.sup.values():
            sup.wait_running(60)
        phase(self.t0, "every program RUNNING")
        return self

    def wait(self, condition, timeout: float, what: str, show=lambda: "", every: float = 1.0) -> object:  # noqa: ANN001
        """The module's wait, ending with the test's budget at the latest."""
        return wait(condition, timeout, what, show, every, budget_ends=self.t0 + BUDGET)

    def workers(self) -> list[dict]:
        return json.loads(self.sup["h1"].beanmail("workers", "--json").stdout)

    def produce(self, host: str, mailout: int) -> None:
        out = open(self.tmp / f"producer-{host}.jsonl", "w")
        self.producers[host] = self.net[host].popen(
            [str(VENV_BIN / "python"), "-m", "tests.test_multihost", "produce", host, str(mailout)],
            env=bare_env(None, BEANMAIL_BEANSTALK_URL=self.url), cwd=ROOT, stdin=subprocess.PIPE, stdout=out,
            stderr=subprocess.STDOUT)
        out.close()

    def puts(self, host: str) -> list[dict]:
        text = (self.tmp / f"producer-{host}.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()[:-1 if not text.endswith("\n") else None]
                if line.startswith("{")]

    def tail(self) -> str:
        return "; ".join(f"{h}: {(self.tmp / f'producer-{h}.jsonl').read_text()[-500:]!r}" for h in self.producers)

    def notified(self) -> list[dict]:
        return [p for h in self.producers for p in self.puts(h) if "a" in p]

    def stop_producers(self) -> None:
        for proc in self.producers.values():
            assert proc.stdin is not None
            proc.stdin.close()
        for host, proc in self.producers.items():
            assert proc.wait(30) == 0, (self.tmp / f"producer-{host}.jsonl").read_text()[-2000:]

    def queued(self, url: str | None = None) -> dict[str, int]:
        """Jobs still in the servers (ready, reserved, delayed, buried), over both or on one."""
        probe = ("import json, sys\nfrom producer.beanstalk import connect\nt={}\n"
                 "for url in sys.argv[1].split(','):\n"
                 "    with connect(url, timeout=5, encoding=None) as c:\n"
                 "        s = c.stats()\n"
                 "        for k in ('ready','reserved','delayed','buried'): t[k] = t.get(k, 0) + int(s['current-jobs-' + k])\n"
                 "print(json.dumps(t))")
        return json.loads(self.net["h1"].run([str(VENV_BIN / "python"), "-c", probe, url or self.url], cwd=ROOT).stdout)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        shutil.rmtree(self.pg.workdir, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Network(["h1", "h2", "db"]) as net:
        f: Fleet | None = None
        try:
            f = Fleet(net, tmp_path)
            yield f.start()
        finally:
            try:
                if f is not None:
                    f.pg.stop()
            finally:
                net.close()  # every process in the namespaces killed, then their files removed
                if f is not None:
                    f.close()


def by_host(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["host"], []).append(r)
    return out


def wait(condition, timeout: float, what: str, show=lambda: "", every: float = 1.0,  # noqa: ANN001
         budget_ends: float | None = None) -> object:
    """``condition`` asked every ``every`` seconds until it holds or ``timeout`` passes (or the
    test's budget ends first); the failure says what ``show`` says then. Gentler than
    wait_until's tight loop: most conditions here start a `beanmail` or `supervisorctl` process,
    and the fleet needs the two cores."""
    deadline = time.monotonic() + timeout
    if budget_ends is not None:
        deadline = min(deadline, budget_ends)
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} ({timeout:.0f}s, or the test's {BUDGET}s); {show()}")
        pause.wait(min(every, max(0.0, deadline - time.monotonic())))


def phase(t0: float, what: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {what}", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def test_a_mailout_and_notifications_across_hosts_exactly_once_through_a_server_kill_and_a_host_disable(
        fleet: Fleet) -> None:
    sink = fleet.sink
    assert sink is not None
    expected_programs = fleet.sup["h1"].expected()
    per_host = sum(expected_programs[name] for name in WORKER_NAMES)  # 3: mail_00, mail_01, urgent_00
    started = producing = time.monotonic()
    fleet.produce("h1", RECIPIENTS)  # queued while the workers start
    fleet.produce("h2", 0)

    # every worker of both hosts registered and running
    def registered() -> list[dict] | None:
        rows = fleet.workers()
        hosts = by_host([r for r in rows if r["state"] == "running"])
        return rows if sorted(hosts) == ["h1", "h2"] and all(len(v) == per_host for v in hosts.values()) else None
    first = fleet.wait(registered, 30, f"{per_host} running workers on each host", fleet.workers)
    phase(started, f"fleet up: {per_host} running workers on each host")
    assert {"host", "pid", "state", "last_seen"} <= set(first[0])
    before = {r["id"]: r["last_seen"] for r in first}
    fleet.wait(lambda: sink.total() >= RECIPIENTS // 20, 60, "a first part delivered",
               lambda: f"have {sink.total()}; producers: {fleet.tail()}", 0.2)
    phase(started, f"{sink.total()} delivered; killing h1's beanstalkd")

    # h1's beanstalkd killed -9 while the producers put and the workers work
    fleet.beanstalkd["h1"].kill()
    killed_at, at_kill = time.time(), sink.total()
    during = lambda: [p for p in fleet.notified() if p["t"] >= killed_at]  # noqa: E731
    fleet.wait(lambda: len(during()) >= 150 and sink.total() >= at_kill + RECIPIENTS // 20, 60,
         "puts and deliveries during the outage", lambda: f"have {len(during())}, {sink.total() - at_kill}", 0.2)
    rows = fleet.workers()
    assert {r["state"] for r in rows} == {"running"} and len(rows) == 2 * per_host, rows
    assert all(r["last_seen"] > before[r["id"]] for r in rows)  # the hearts beat through the outage
    fleet.beanstalkd["h1"].start()  # same binlog: what it held comes back
    back_at = time.time()
    restored = sum(fleet.queued(fleet.beanstalkd["h1"].url).values())
    assert restored > 0  # the jobs it held when killed, back from the binlog (and drained below)
    phase(started, f"{sink.total()} delivered; h1's beanstalkd back from its binlog; disabling h2")
    outage = [p for p in fleet.notified() if killed_at <= p["t"] < back_at]

    # h2's workers disabled from h1: they finish the job in hand and exit 0, and stay down
    seen = {r["id"]: r["last_seen"] for r in fleet.workers()}
    fleet.sup["h1"].beanmail("workers", "disable", "h2")
    h2 = fleet.sup["h2"]

    def worker_states() -> list[str]:
        return [s for p, (s, _) in h2.states().items() if p.startswith(WORKER_PROGRAMS)]
    fleet.wait(lambda: worker_states() == ["EXITED"] * per_host, 30, "h2's workers to exit", h2.states)
    assert h2.log().count("(exit status 0; expected)") == per_host
    at_disable = sink.total()

    def only_h1_runs() -> dict | None:
        hosts = by_host(fleet.workers())
        ok = ({r["state"] for r in hosts["h2"]} == {"disabled"} and {r["state"] for r in hosts["h1"]} == {"running"}
              and all(r["last_seen"] > seen[r["id"]] for r in hosts["h1"]))
        return hosts if ok else None
    hosts = fleet.wait(only_h1_runs, 30, "h2 disabled, h1 running with its heart beating", fleet.workers)
    old_h2 = {r["id"] for r in hosts["h2"]}
    assert len(old_h2) == per_host
    silent_since = max(r["last_seen"] for r in hosts["h2"])  # their last word, as they exited
    fleet.wait(lambda: sink.total() >= at_disable + RECIPIENTS // 40, 60, "h1 delivering alone",
         lambda: f"have {sink.total() - at_disable}", 0.2)
    phase(started, f"{sink.total()} delivered; enabling h2")
    assert worker_states() == ["EXITED"] * per_host  # still down: supervisord keeps an expected exit down

    # enabled on h2: its supervisord starts the workers again
    out = h2.beanmail("workers", "enable", "h2").stdout
    assert "started beanmail:mail_00" in out, out

    def h2_back() -> dict | None:
        hosts = by_host(fleet.workers())
        new = [r for r in hosts["h2"] if r["id"] not in old_h2]
        ok = (len(new) == per_host and {r["state"] for r in new} == {"running"}
              and {r["state"] for r in hosts["h2"] if r["id"] in old_h2} == {"stopped"}  # enable clears "disabled"
              and {r["state"] for r in hosts["h1"]} == {"running"})
        return hosts if ok else None
    fleet.wait(lambda: worker_states() == ["RUNNING"] * per_host, 30, "h2's supervisord to start them", h2.states)
    fleet.wait(h2_back, 30, "h2's workers running again", fleet.workers)

    def h2_at_work() -> bool:  # the producers still put: there is work for them
        return sum(r["jobs_done"] for r in fleet.workers() if r["host"] == "h2" and r["id"] not in old_h2) > 0
    fleet.wait(h2_at_work, 30, "h2's new workers to do jobs", fleet.workers)

    # the producers stop; everything they put and the whole mailout delivered, once
    phase(started, f"{sink.total()} delivered; h2 back; stopping the producers")
    fleet.stop_producers()
    notified = fleet.notified()
    failed = [p for p in notified if "error" in p or not p.get("id")]
    expected = {f"m{i:05d}@fleet.example" for i in range(RECIPIENTS)} | {p["a"] for p in notified}

    def all_delivered() -> bool:
        return expected <= set(sink.count())
    fleet.wait(all_delivered, BUDGET, "every message delivered",
         lambda: f"missing {len(expected - set(sink.count()))}, queued {fleet.queued()}", 0.2)
    phase(started, "all delivered")
    fleet.wait(lambda: fleet.queued() == {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0}, 30,
         "both servers drained", fleet.queued)
    seconds = time.monotonic() - producing

    delivered = sink.count()
    duplicates = sum(n - 1 for n in delivered.values() if n > 1)
    lost = len(expected - set(delivered)) + len(failed)
    unexpected = set(delivered) - expected
    # the puts of the outage, and among them those whose key's own server was the dead one
    # (the first of the list: producer/servers.py orders them from crc32(key) % 2 on)
    durations = [p["d"] * 1000 for p in outage]
    over = [p["d"] * 1000 for p in outage if zlib.crc32(f"fleet:{p['a']}".encode()) % 2 == 0]
    # h2's old workers silent long enough to be taken for lost by every `workers` call since
    # (BEANMAIL_LOST_AFTER): they must still read as disabled
    fleet.wait(lambda: time.time() - silent_since > LOST_AFTER, LOST_AFTER + 5,
               "h2's old workers silent past BEANMAIL_LOST_AFTER", every=0.5)
    final = fleet.workers()
    print(f"FLEET delivered={sum(delivered.values())} expected={len(expected)} mailout={RECIPIENTS}"
          f" notifications={len(notified)} duplicates={duplicates} lost={lost} seconds={seconds:.1f}"
          f" restored_from_binlog={restored} outage_puts={len(outage)} failed_over={len(over)}"
          f" put_p50_ms={statistics.median(durations):.2f} put_p99_ms={percentile(durations, 99):.2f}"
          f" failover_p50_ms={statistics.median(over):.2f} failover_p99_ms={percentile(over, 99):.2f}"
          f" failover_max_ms={max(over):.2f}")

    assert not failed, failed[:5]
    assert duplicates == 0 and lost == 0 and not unexpected, (duplicates, lost, sorted(unexpected)[:5])
    # the registry at the end: h1's first workers ran throughout, their hearts beating; h2's first
    # ones are stopped (they exited when disabled; enable cleared "disabled"), its new ones run
    hosts = by_host(final)
    assert {r["state"] for r in hosts["h1"]} == {"running"} and len(hosts["h1"]) == per_host
    assert all(r["last_seen"] > before[r["id"]] for r in hosts["h1"])
    assert sorted(r["state"] for r in hosts["h2"]) == ["running"] * per_host + ["stopped"] * per_host


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    produce(sys.argv[2], int(sys.argv[3]))
