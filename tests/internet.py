"""A simulated internet of slow MX hosts on loopback, for the direct-MX tests and `make bench`.

One process (``python -m tests.internet SPEC.json``) serves SMTP for N domains, each MX host on
its own loopback address (127.0.1.1, 127.0.1.2, ...), all on one port. Each answers the end of
data after ``delay`` seconds; the first ``greylist`` domains refuse a recipient's first try with
451 4.7.1 (greylisting), the next ``close_after_domains`` close a session after ``close_after``
messages with 421. On SIGTERM it writes what it saw to ``SPEC.json``'s ``report`` path: messages
accepted per recipient, the peak of simultaneous sessions per domain, greylist refusals, 421s.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = "127.0.1."  # domain i's MX host listens on 127.0.1.(i+1)


def address(i: int) -> str:
    return f"{BASE}{i + 1}"


def domain(i: int) -> str:
    return f"d{i}.internet.example"


def dnsmasq_lines(domains: int) -> list[str]:
    """The dnsmasq options that give each domain its MX host."""
    out = []
    for i in range(domains):
        out += [f"mx-host={domain(i)},mx.{domain(i)},10", f"host-record=mx.{domain(i)},{address(i)}"]
    return out


@dataclass
class Internet:
    domains: int
    port: int
    delay: float = 1.0
    greylist: int = 0
    close_after_domains: int = 0
    close_after: int = 5
    accepted: Counter[str] = field(default_factory=Counter)
    sessions: Counter[int] = field(default_factory=Counter)
    peak: Counter[int] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)  # greylisting: recipients tried once already
    greylisted: int = 0
    closed_421: int = 0

    def report(self) -> dict[str, Any]:
        return {"accepted": dict(self.accepted), "peak_sessions": {domain(i): n for i, n in self.peak.items()},
                "greylisted": self.greylisted, "closed_421": self.closed_421}

    async def serve(self) -> list[asyncio.base_events.Server]:
        servers = []
        for i in range(self.domains):
            handler = (lambda index: lambda r, w: self.session(index, r, w))(i)
            servers.append(await asyncio.start_server(handler, address(i), self.port, backlog=512))
        return servers

    async def session(self, i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions[i] += 1
        self.peak[i] = max(self.peak[i], self.sessions[i])
        delivered = 0
        rcpts: list[str] = []
        try:
            writer.write(b"220 mx.%s ESMTP\r\n" % domain(i).encode())
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n")
                elif verb == b"MAIL":
                    rcpts = []
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    rcpt = line[8:].strip().strip(b"<>").decode("utf-8", "replace").lower()
                    if i < self.greylist and rcpt not in self.seen:
                        self.seen.add(rcpt)
                        self.greylisted += 1
                        writer.write(b"451 4.7.1 greylisted, try again later\r\n")
                    else:
                        rcpts.append(rcpt)
                        writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    if not rcpts:
                        writer.write(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while (chunk := await reader.readline()) not in (b".\r\n", b".\n", b""):
                        pass
                    await asyncio.sleep(self.delay)
                    for rcpt in rcpts:
                        self.accepted[rcpt] += 1
                    delivered += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                    if self.greylist <= i < self.greylist + self.close_after_domains and delivered >= self.close_after:
                        await writer.drain()
                        writer.write(b"421 4.3.2 too many messages in this session, come back later\r\n")
                        self.closed_421 += 1
                        return
                elif verb == b"RSET":
                    rcpts = []
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"NOOP":
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    return
                else:
                    writer.write(b"502 5.5.2 not implemented\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.sessions[i] -= 1
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, RuntimeError):
                pass


async def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    internet = Internet(spec["domains"], spec["port"], spec.get("delay", 1.0), spec.get("greylist", 0),
                        spec.get("close_after_domains", 0), spec.get("close_after", 5))
    servers = await internet.serve()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    Path(spec["ready"]).write_text("ready")
    await stop.wait()
    for s in servers:
        s.close()
    Path(spec["report"]).write_text(json.dumps(internet.report()))


class SimulatedInternet:
    """The server process and a dnsmasq that gives each domain its MX host; ``stop()`` returns
    the server's report."""

    def __init__(self, workdir: Path, domains: int, *, delay: float = 1.0, greylist: int = 0,
                 close_after_domains: int = 0, close_after: int = 5) -> None:
        from .servers import Dnsmasq, common_free_port

        workdir.mkdir(parents=True, exist_ok=True)
        self.domains = domains
        self.port = common_free_port([address(i) for i in range(domains)])
        self.spec = workdir / "internet.json"
        self.ready, self.report_path = workdir / "internet.ready", workdir / "internet.report.json"
        self.spec.write_text(json.dumps({
            "domains": domains, "port": self.port, "delay": delay, "greylist": greylist,
            "close_after_domains": close_after_domains, "close_after": close_after,
            "ready": str(self.ready), "report": str(self.report_path)}))
        self.dns = Dnsmasq(workdir / "dns", dnsmasq_lines(domains), zone="internet.example")
        self.proc: Any = None

    def start(self) -> "SimulatedInternet":
        import subprocess

        from .servers import wait_until

        self.dns.start()
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.internet", str(self.spec)], cwd=root)
        wait_until(lambda: self.ready.exists() or self.proc.poll() is not None, 30, "the simulated internet")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the simulated internet exited {self.proc.returncode}")
        return self

    def stop(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
            if self.report_path.exists():
                report = json.loads(self.report_path.read_text())
        self.dns.stop()
        return report


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
