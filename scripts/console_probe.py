"""Probe a running `beanmail web` as a hostile network would, over raw sockets, and print what it
answered: a foreign Host, an impossible job id, bad Content-Length values, and N half-sent
requests held open (the process's thread count then, and how long a normal request waited).

    .venv/bin/beanmail web --listen 127.0.0.1:8025 &
    .venv/bin/python scripts/console_probe.py 127.0.0.1:8025 --pid $! --half-sent 300

Loopback only: it is a check of one's own console, not a load tool."""

from __future__ import annotations

import argparse
import re
import socket
import time
from pathlib import Path


def ask(address: tuple[str, int], data: bytes, timeout: float) -> tuple[str, float]:
    """(the status line, or "no answer", seconds until it)."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        try:
            first = s.recv(200).split(b"\r\n")[0].decode("latin-1")
        except socket.timeout:
            first = "no answer"
    return first or "closed", time.monotonic() - started


def threads(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^Threads:\s+(\d+)", status, re.M)
    return int(m.group(1)) if m else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("listen", help="HOST:PORT of the console (loopback)")
    p.add_argument("--pid", type=int, help="the console's process, to count its threads")
    p.add_argument("--half-sent", type=int, default=300, help="requests sent in part and held open")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any one answer")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    address = (host.strip("[]"), int(port))
    own = f"Host: {args.listen}\r\n"
    probes = [
        ("foreign Host, GET /log", b"GET /log HTTP/1.1\r\nHost: rebind.evil.example\r\nConnection: close\r\n\r\n"),
        ("GET /job/99999999999999999999999",
         f"GET /job/99999999999999999999999 HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode()),
    ]
    for length in ("-1", "abc", "99999999999999999999999"):
        probes.append((f"POST with Content-Length: {length}",
                       f"POST /suppressions/add HTTP/1.1\r\n{own}Content-Length: {length}\r\n\r\nx".encode()))
    for name, data in probes:
        status, took = ask(address, data, args.timeout)
        print(f"{name:<50} {status:<35} {took * 1000:8.1f} ms")
    if args.pid:
        print(f"{'threads before':<50} {threads(args.pid)}")
    held = []
    try:
        for _ in range(args.half_sent):
            s = socket.create_connection(address, timeout=5)
            s.sendall(f"GET /log HTTP/1.1\r\n{own}X-Slow: ".encode())
            held.append(s)
        time.sleep(1)
        if args.pid:
            print(f"{f'threads with {args.half_sent} half-sent requests':<50} {threads(args.pid)}")
        status, took = ask(address, f"GET /healthz HTTP/1.1\r\n{own}Connection: close\r\n\r\n".encode(), args.timeout)
        print(f"{'GET /healthz meanwhile':<50} {status:<35} {took * 1000:8.1f} ms")
    finally:
        for s in held:
            s.close()


if __name__ == "__main__":
    main()
