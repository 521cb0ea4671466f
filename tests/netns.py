"""Hosts made of network namespaces, for tests that need several machines on one.

A ``Network`` is a bridge in a namespace of its own and one namespace per host, each joined to
the bridge by a veth pair, with an address from 198.18.0.0/15 (RFC 2544's benchmarking range).
Nothing is added to the root namespace: the addresses, the links and the bridge exist only inside
the namespaces, so the tests' servers are reachable only from processes started in them
(``ip netns exec``). ``close()`` kills every process left in those namespaces and deletes them;
use the network as a context manager (or from a fixture's ``finally``) so a failing test still
tears it down. Needs root (CI runs the suite as root).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .servers import wait_until

PREFIX = "bmfleet"  # namespace names: bmfleet<pid>-<n>-<host>; the pid finds a crashed run's leftovers
SUBNET = "198.18.0"  # a /24 of 198.18.0.0/15, private to the namespaces


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]


def kill_all_in(ns: str, timeout: float = 15) -> None:
    """SIGKILL every process whose network namespace is ``ns`` (all of them were started in it
    by the test, and whatever they forked), then wait until none is left."""
    def gone() -> bool:
        for pid in pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids_in(ns)
    wait_until(gone, timeout, f"the processes of namespace {ns} to exit")


def delete(ns: str) -> None:
    kill_all_in(ns)
    ip("netns", "delete", ns, check=False)


def remove_leftovers() -> None:
    """Namespaces of an earlier run whose test process no longer exists (killed before its
    teardown ran)."""
    for ns in namespaces():
        m = re.fullmatch(rf"{PREFIX}(\d+)-[\w-]+", ns)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            delete(ns)


_networks = itertools.count(1)


@dataclass
class Host:
    name: str
    ns: str
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, args)]

    def popen(self, args: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: object) -> subprocess.Popen:
        """A process in this host's namespace (``ip netns exec`` execs it: the Popen's pid is the
        program's own)."""
        proc = subprocess.Popen(self.command(args), env=dict(env) if env is not None else None, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60,
            check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.command(args), env=dict(env) if env is not None else None, capture_output=True,
                              text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise AssertionError(f"on {self.name}: {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def port_open(self, port: int, address: str | None = None) -> bool:
        """Whether something listens on ``address:port``, asked from inside this host."""
        probe = ("import socket,sys\ntry: socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5).close()\n"
                 "except OSError: sys.exit(1)")
        return self.run(["python3", "-c", probe, address or self.address, str(port)], check=False).returncode == 0


class Network:
    """``with Network(["h1", "h2", "db"]) as net: net["h1"].popen([...])``"""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{next(_networks)}"
        self.bridge = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        self.names = list(hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> "Network":
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        remove_leftovers()
        ip("netns", "add", self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for n, name in enumerate(self.names, start=1):
            host = Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{n}")
            ip("netns", "add", host.ns)
            self.hosts[name] = host
            ip("-n", host.ns, "link", "set", "lo", "up")
            # both ends made inside the namespaces: the pair never appears in the root namespace
            ip("-n", self.bridge, "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            ip("-n", self.bridge, "link", "set", f"v{n}", "master", "br0", "up")
            ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Every process in the hosts' namespaces killed, the namespaces (and with them the
        veth pairs and the bridge) deleted. Safe to call twice, and after a partial create."""
        errors: list[Exception] = []
        for host in self.hosts.values():
            try:
                delete(host.ns)
            except Exception as exc:  # noqa: BLE001 - the others are deleted all the same
                errors.append(exc)
            for proc in host.procs:  # reap them: killed above, or exited before
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.hosts.clear()
        if self.bridge in namespaces():
            delete(self.bridge)
        if errors:
            raise errors[0]
        left = [ns for ns in namespaces() if ns.startswith(self.prefix + "-")]
        assert not left, f"namespaces left behind: {left}"
