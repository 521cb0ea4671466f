"""Real servers for the tests (and the benchmark), each on a free loopback port: beanstalkd,
aiosmtpd, dnsmasq, PostgreSQL, MariaDB, maildev and Postfix's smtp-sink.

Every wait here is a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Callable

from aiosmtpd.controller import Controller


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def common_free_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (loopback addresses of one test's servers)."""
    while True:
        port = free_port()
        try:
            for h in hosts:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def which(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(f"{name} is not installed: run `make setup` (it installs it)")


class Beanstalkd:
    """A beanstalkd process with a binlog, which can be stopped and started on the same port."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", binlog: bool = True) -> None:
        self.host = host
        self.port = free_port(host)
        self.binlog = workdir / "binlog"
        self.binlog.mkdir(parents=True, exist_ok=True)
        self.with_binlog = binlog  # False: as beanstalkd runs when started without -b
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"beanstalk://{self.host}:{self.port}"

    def start(self) -> "Beanstalkd":
        self.proc = subprocess.Popen(
            [which("beanstalkd"), "-l", self.host, "-p", str(self.port),
             *(["-b", str(self.binlog)] if self.with_binlog else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.host, self.port), 10, "beanstalkd to listen")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False
    login: object = None
    at: float = field(default_factory=time.monotonic)  # when the server took it

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    # local part prefix -> reply for RCPT; e.g. {"tempfail": "451 4.3.0 try later"}
    rcpt_replies: dict[str, str] = field(default_factory=lambda: {
        "tempfail": "451 4.3.0 Temporary failure, try later",
        "reject": "550 5.1.1 No such user",
        "spamtrap": "550 5.7.1 Message rejected as spam",
    })
    data_reply: str | None = None
    data_delay: float = 0.0  # seconds before answering DATA: a slow receiver
    # seconds between taking the message (it counts as received) and its 250: the window where a
    # sender killed has a message delivered and no reply
    reply_delay: float = 0.0
    data_received: int = 0  # messages whose end of data arrived (counted before any delay)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        local = address.split("@")[0].lower()
        for prefix, reply in self.rcpt_replies.items():
            if local.startswith(prefix):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        self.data_received += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                          tls=server.transport.get_extra_info("ssl_object") is not None,
                                          login=getattr(session.auth_data, "login", None)))
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)
        return "250 2.0.0 Ok: queued"


class SmtpServer:
    """aiosmtpd on a loopback port; restartable on the same port to test reconnects."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, **smtp_options: object) -> None:
        """``smtp_options`` go to aiosmtpd's SMTP: tls_context, require_starttls, authenticator..."""
        self.host = host
        self.port = port or free_port(host)
        self.handler = _Handler()
        self.controller: Controller | None = None
        self.smtp_options = smtp_options

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}?starttls=off"

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def start(self) -> "SmtpServer":
        self.controller = Controller(self.handler, hostname=self.host, port=self.port,
                                     data_size_limit=10 * 1024 * 1024, **self.smtp_options)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        wait_until(lambda: len(self.messages) >= count, timeout, f"{count} messages (have {len(self.messages)})")
        return self.messages


class _Process:
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Dnsmasq(_Process):
    """A real DNS server on a loopback port, authoritative for the zone the tests invent."""

    def __init__(self, workdir: Path, lines: list[str], zone: str = "mx.example") -> None:
        self.port = free_port()
        self.zone = zone
        self.conf = workdir / "dnsmasq.conf"
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
            "user=root", "local-ttl=300", f"local=/{zone}/", *lines,
        ]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Dnsmasq":
        self.proc = subprocess.Popen(
            [which("dnsmasq"), "--keep-in-foreground", f"--conf-file={self.conf}", "--pid-file=",
             "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            import dns.resolver
            r = dns.resolver.Resolver(configure=False)
            r.nameservers, r.port, r.lifetime = ["127.0.0.1"], self.port, 0.5
            try:
                r.resolve(f"probe.invalid-zone.{self.zone}", "A")
            except dns.resolver.NXDOMAIN:
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return True
        wait_until(answers, 10, "dnsmasq to answer")
        return self



class Postgres:
    """A throw-away PostgreSQL cluster (Debian's server binaries), trust auth on loopback."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise FileNotFoundError("PostgreSQL server is not installed: run `make setup-test` (it installs it)")
        self.bin = bins[-1].parent
        # not under pytest's tmp_path: that is private to root, and the server refuses to run
        # as root, so it runs as the postgres user Debian's package creates
        self.workdir = Path(tempfile.mkdtemp(prefix="beanmail-pg-"))
        self.dir = self.workdir / "pgdata"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:
            self.user_prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.workdir, "postgres")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> "Postgres":
        subprocess.run([*self.user_prefix, str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            [*self.user_prefix, str(self.bin / "postgres"), "-D", str(self.dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open("127.0.0.1", self.port), 30, "PostgreSQL to listen")
        wait_until(self._accepts, 30, "PostgreSQL to accept connections")  # it listens while still starting up
        return self

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class MariaDB:
    """A throw-away MariaDB server (Debian's mariadb-server): its own datadir, socket and pid file
    in a temp dir, TCP on a free loopback port, root without a password from 127.0.0.1. Started as
    its own instance (``--no-defaults``): the machine's my.cnf and service are never touched."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="beanmail-mariadb-"))
        self.datadir = self.workdir / "data"
        self.socket = self.workdir / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = "root" if os.geteuid() == 0 else ""

    def dsn(self, db: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{db}"

    def start(self) -> "MariaDB":
        user = [f"--user={self.user}"] if self.user else []
        subprocess.run([which("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}", *user,
                        "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                       check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            [which("mariadbd"), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.workdir / 'mysqld.pid'}",
             *user, "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
             "--innodb-log-file-size=8M", "--innodb-flush-log-at-trx-commit=0",
             f"--log-error={self.workdir / 'error.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._accepts, 60, "MariaDB to accept connections")
        return self

    def _accepts(self) -> bool:
        import pymysql

        if self.proc is not None and self.proc.poll() is not None:
            log = (self.workdir / "error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mariadbd exited {self.proc.returncode}:\n{log}")
        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2).close()
            return True
        except pymysql.err.OperationalError:
            return False

    def create_database(self, name: str, statements: list[str] = ()) -> str:  # type: ignore[assignment]
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                cur.execute(f"USE `{name}`")
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()
        return self.dsn(name)

    def execute(self, db: str, statement: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=db, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class Maildev(_Process):
    """The development catcher (maildev from the npm registry, installed by `make setup`)."""

    def __init__(self, workdir: Path) -> None:
        self.bin = Path(__file__).resolve().parent.parent / "var" / "catcher" / "node_modules" / ".bin" / "maildev"
        if not self.bin.exists():
            raise FileNotFoundError("maildev is not installed: run `make setup` (it installs it)")
        self.smtp_port, self.web_port = free_port(), free_port()
        self.maildir = workdir / "maildev"
        self.maildir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def smtp_url(self) -> str:
        return f"smtp://127.0.0.1:{self.smtp_port}?starttls=off"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> "Maildev":
        self.proc = subprocess.Popen(
            [str(self.bin), "--ip", "127.0.0.1", "--web-ip", "127.0.0.1", "--smtp", str(self.smtp_port),
             "--web", str(self.web_port),
             "--mail-directory", str(self.maildir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open("127.0.0.1", self.web_port) and port_open("127.0.0.1", self.smtp_port),
                   30, "maildev to listen")
        return self



class SmtpSink:
    """Postfix's smtp-sink: a real, fast SMTP server that offers PIPELINING and can be told to
    refuse commands (-r soft, -f hard), drop the connection (-Q), answer slowly (-w SECONDS) or
    exit after N messages (-M N). With ``dump`` (the tests) -d keeps every message; the
    benchmark runs it without, and with a longer listen backlog."""

    def __init__(self, *options: str, host: str = "127.0.0.1", dump: bool = True, backlog: int = 64) -> None:
        self.host, self.port = host, free_port(host)
        self.dumps: Path | None = None
        args = [which("smtp-sink"), "-u", "nobody"]
        if dump:
            # smtp-sink writes as nobody: not under pytest's tmp_path, which only root may enter
            self.dumps = Path(tempfile.mkdtemp(prefix="beanmail-sink-"))
            os.chmod(self.dumps, 0o777)
            args += ["-d", f"{self.dumps}/%M."]
        self.proc = subprocess.Popen([*args, *options, f"{host}:{self.port}", str(backlog)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(host, self.port), 10, "smtp-sink to listen")

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}?starttls=off"

    def messages(self) -> list[bytes]:
        assert self.dumps is not None, "started without dump"
        return [p.read_bytes() for p in sorted(self.dumps.rglob("*")) if p.is_file()]

    def wait(self, timeout: float) -> None:
        """Until it exits by itself (-M N: after N messages)."""
        self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.dumps is not None:
            shutil.rmtree(self.dumps, ignore_errors=True)
