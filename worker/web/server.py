"""`beanmail web`: the console on a threaded WSGI server from the standard library. An operator
console serves a few people, not the internet: put a reverse proxy (TLS) in front of it for
anything beyond the host."""

from __future__ import annotations

import ipaddress
import signal
import socket
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..logs import get_logger
from ..settings import Settings, SettingsError
from .app import Console


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


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        get_logger().info("web request", client=self.client_address[0], line=format % args)


def serve(settings: Settings) -> int:
    host, port = check_listen(settings)
    from ..feedback.webhooks import with_webhooks

    console = Console(settings)
    # provider webhooks (docs/feedback.md) under /webhooks, ahead of the console's basic auth:
    # each provider proves itself with its own signature
    server = make_server(host, port, with_webhooks(console, settings), server_class=_Server, handler_class=_Handler)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    get_logger().info("console listening", url=f"http://{settings.web_listen}/", auth=bool(settings.web_password))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        console.close()
    get_logger().info("console stopped")
    return 0
