"""`beanmail web`: the console on waitress, behind its Host check, with bounded connections and
per-connection timeouts. An operator console serves a few people, not the internet: put a
reverse proxy (TLS) in front of it for anything beyond the host."""

from __future__ import annotations

import ipaddress
import resource
import signal
import socket
import time
from typing import Any, Callable, Iterable

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from ..logs import get_logger
from ..settings import Settings, SettingsError
from .app import Console
from .guard import HostGuard, host_rules


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SettingsError(f"BEANMAIL_WEB_LISTEN: {listen!r} must be HOST:PORT, e.g. 127.0.0.1:8025")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Every address the name stands for is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_listen(settings: Settings) -> tuple[str, int]:
    host, port = parse_listen(settings.web_listen)
    if not settings.web_password and not is_loopback(host):
        raise SettingsError(f"BEANMAIL_WEB_LISTEN: {settings.web_listen} is reachable from other hosts: set"
                            " BEANMAIL_WEB_PASSWORD (HTTP basic auth) to listen there, or listen on 127.0.0.1")
    return host, port


THREADS = 8  # requests served at once; a connection holds none while its request arrives
CONNECTIONS = 500  # open connections; at the limit, the longest-waiting half-sent half are closed
SPARE_FILES = 64  # file descriptors kept for the store, beanstalkd and the logs
MAX_BODY = 1024 * 1024 + 1  # the largest body read (a provider webhook's, 1 MiB) + 1; a longer one is 400 at once
# a reply posted by a provider's inbound webhook may carry attachments (docs/events.md: 40 MiB)
INBOUND_PATH, INBOUND_MAX_BODY = "/webhooks/inbound/", 40 * 1024 * 1024 + 1
MAX_HEADERS = 64 * 1024


class _TimedParser(HTTPRequestParser):
    """A request being received, with when its first byte came; a Content-Length above the
    largest body read is refused as malformed (400) as soon as the headers are in."""

    def __init__(self, adj: Any) -> None:
        super().__init__(adj)
        self.started = time.monotonic()

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        limit = INBOUND_MAX_BODY if INBOUND_PATH in (self.path or "") else MAX_BODY
        if self.content_length >= limit:
            raise ParsingError(f"Content-Length {self.content_length} is above the largest body this console reads"
                               f" at {self.path or '/'} ({limit - 1} bytes)")


class _Channel(HTTPChannel):
    parser_class = _TimedParser


def _close_slow_requests(server: Any, timeout: float) -> None:
    """waitress closes a connection silent for ``channel_timeout``; this closes, as well, one
    whose request has not all come within ``timeout`` however it trickles in, and, when the
    connections reach the limit, the longest-waiting half of those still sending their request
    (or nothing), so that connections waiting in the listen queue get in within a second."""
    idle = server.maintenance

    def maintenance(now: float) -> None:
        idle(now)
        clock, wall = time.monotonic(), time.time()
        waiting = []  # (when its request began, channel): channels not being served
        for channel in list(server.active_channels.values()):
            request = channel.request
            if channel.requests or channel.total_outbufs_len or (request is not None and request.completed):
                continue
            began = request.started if request is not None else clock - (wall - channel.creation_time)
            if request is not None and clock - began > timeout:
                channel.will_close = True
            else:
                waiting.append((began, id(channel), channel))
        excess = len(server.active_channels) - server.adj.connection_limit // 2
        if len(server._map) >= server.adj.connection_limit and excess > 0:  # as waitress counts (its own sockets too)
            for _, _, channel in sorted(waiting)[:excess]:
                channel.will_close = True

    server.channel_class = _Channel
    server.maintenance = maintenance


def connection_limit(wanted: int = CONNECTIONS) -> int:
    """``wanted`` connections, the soft limit on open files raised for them as far as the hard
    one allows (a bare supervisord program may start with 1024); fewer if it cannot be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(16, min(wanted, soft - SPARE_FILES))


def make_server(settings: Settings, app: Callable[..., Iterable[bytes]], host: str, port: int) -> Any:
    """waitress (a maintained WSGI server made for this): its main thread reads every connection
    without blocking and hands a request to one of THREADS only once it has all come, so a
    half-sent request holds a socket, never a thread; a connection silent for, or a request
    slower than, BEANMAIL_WEB_TIMEOUT is closed; a bad Content-Length (negative, not a number,
    above MAX_BODY, or INBOUND_MAX_BODY for an inbound reply) is 400 at once; each app checks its
    own smaller limit of what it reads (a chunked body past INBOUND_MAX_BODY: 413)."""
    server = create_server(app, host=host, port=port, threads=THREADS, connection_limit=connection_limit(),
                           channel_timeout=settings.web_timeout, cleanup_interval=1,
                           max_request_body_size=INBOUND_MAX_BODY, max_request_header_size=MAX_HEADERS,
                           ident="beanmail", expose_tracebacks=False, clear_untrusted_proxy_headers=True,
                           asyncore_use_poll=True)  # select() stops at descriptor 1024
    for one in getattr(server, "map", {}).values() if isinstance(server, MultiSocketServer) else [server]:
        if isinstance(one, BaseWSGIServer):
            _close_slow_requests(one, settings.web_timeout)
    return server


def serve(settings: Settings) -> int:
    host, port = check_listen(settings)
    rules = host_rules(settings, host, port)
    from ..feedback.webhooks import with_webhooks

    console = Console(settings)
    # the Host check first of all; then provider webhooks (docs/feedback.md) under /webhooks, ahead
    # of the console's basic auth: each provider proves itself with its own signature
    server = make_server(settings, HostGuard(with_webhooks(console, settings), rules), host, port)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    get_logger().info("console listening", url=f"http://{settings.web_listen}/", auth=bool(settings.web_password),
                      hosts=sorted(f"{n}:{p}" if p else n for n, p in rules), timeout=settings.web_timeout)
    if host in ("0.0.0.0", "::") and not settings.web_hosts:
        get_logger().warning("console answers to loopback names only", listen=settings.web_listen,
                             hint="set BEANMAIL_WEB_HOSTS to the names and addresses other hosts use to reach it")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        console.close()
    get_logger().info("console stopped")
    return 0
