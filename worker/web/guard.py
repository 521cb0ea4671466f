"""What the console refuses before it looks at a request: a ``Host`` that is not one of its names
(a page of another site that rebinds its own name to 127.0.0.1 sends its own name), and a
client guessing the password (each failed login in a row makes it wait twice as long)."""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from ..logs import get_logger
from ..settings import Settings, SettingsError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_NAME = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9_](?:[a-z0-9_.\-]*[a-z0-9_])?)$")
# (name, port): port None matches any port
HostRule = tuple[str, "int | None"]


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None] | None:
    """``Name:Port`` -> (``name``, port); ``[::1]:8025`` keeps its brackets. None when it is not
    a host name (or address) with an optional port."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    else:
        name, sep, port_text = value.partition(":")
        if sep and not port_text:
            port_text = "x"
    if not _NAME.match(name) or len(name) > 253:
        return None
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    if not port_text:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def host_rules(settings: Settings, listen_host: str, port: int) -> frozenset[HostRule]:
    """The loopback names with the listening port, the address it listens on, and every
    ``BEANMAIL_WEB_HOSTS`` entry (``NAME``: any port, ``NAME:PORT``: that one)."""
    rules: set[HostRule] = {(name, port) for name in LOOPBACK_NAMES}
    listen = listen_host.lower()
    if listen not in ("", "0.0.0.0", "::"):
        rules.add((f"[{listen}]" if ":" in listen else listen, port))
    for entry in settings.web_hosts.split(","):
        if not entry.strip():
            continue
        rule = split_host(entry)
        if rule is None:
            raise SettingsError(f"BEANMAIL_WEB_HOSTS: {entry.strip()!r} is not a host name, NAME or NAME:PORT"
                                " (an IPv6 address in brackets: [2001:db8::1]:8025)")
        rules.add(rule)
    return frozenset(rules)


def host_allowed(rules: frozenset[HostRule], host_header: str, scheme: str = "http") -> bool:
    given = split_host(host_header, 443 if scheme == "https" else 80)
    if given is None:
        return False
    name, port = given
    return (name, port) in rules or (name, None) in rules


class HostGuard:
    """WSGI middleware: a request whose ``Host`` is not one of ``rules`` is answered 421 with the
    reason, before the app (the console, the webhooks) sees it, and logged."""

    def __init__(self, app: Callable[..., Iterable[bytes]], rules: frozenset[HostRule]) -> None:
        self.app, self.rules = app, rules

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if host is not None and host_allowed(self.rules, host, environ.get("wsgi.url_scheme", "http")):
            return self.app(environ, start_response)
        shown = repr(host[:100]) if host is not None else "none"
        if host is None:
            status, text = "400 Bad Request", "refused: the request has no Host header\n"
        else:
            status = "421 Misdirected Request"
            # (the names it answers to are in its start's log line, not told to whoever asks)
            text = f"refused: Host {shown} is not a name of this console; BEANMAIL_WEB_HOSTS adds names\n"
        get_logger().warning("console request refused", reason="host not allowed", host=shown,
                             client=environ.get("REMOTE_ADDR", ""), path=str(environ.get("PATH_INFO", ""))[:200])
        from .app import SECURITY_HEADERS

        body = text.encode("utf-8", "replace")
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                                *SECURITY_HEADERS])
        return [body]


class LoginThrottle:
    """Failed logins per client address: after the n-th failure in a row the client is refused
    (429) without its password being looked at for ``base * 2**(n-1)`` seconds, at most
    ``longest``; a good login clears its count. At most ``clients`` addresses are remembered
    (the oldest forgotten first), and a client quiet for an hour starts again from nothing."""

    def __init__(self, base: float = 1.0, longest: float = 60.0, clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.longest, self.clients, self.clock = base, longest, clients, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (count, until)
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try a password again (0: now)."""
        with self._lock:
            entry = self._failures.get(client)
            return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def failed(self, client: str) -> tuple[int, float]:
        """Records a failure: (failures in a row, seconds the client must now wait)."""
        now = self.clock()
        with self._lock:
            count, until = self._failures.pop(client, (0, now))
            if now - until > 3600:
                count = 0
            count += 1
            delay = min(self.longest, self.base * 2 ** min(count - 1, 30))
            self._failures[client] = (count, now + delay)
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)
            return count, delay

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
