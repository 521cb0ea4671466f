"""A webhook endpoint for the events tests and bench: a threaded ``http.server`` on a free
loopback port, HTTP/1.1 with keep-alive as an application's server would be, that records
each request (id, headers, body) and answers what the test scripts (e.g. 503 for a while)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Received:
    id: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the endpoint answered
    at: float = 0.0  # time.monotonic() when it came


class Endpoint:
    """``answer(request_number) -> status`` decides each reply (200 by default)."""

    def __init__(self, answer: Callable[[int], int] = lambda n: 200, port: int = 0) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                super().setup()
                # the headers and the body go in two writes: without this, Nagle's algorithm and
                # the client's delayed ACK hold every reply 40 ms (a real server sets it too)
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with endpoint._lock:
                    endpoint.connections += 1

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with endpoint._lock:
                    status = endpoint.answer(len(endpoint.received))
                    endpoint.received.append(Received(self.headers.get("webhook-id", ""),
                                                      {k.lower(): v for k, v in self.headers.items()}, body, status,
                                                      time.monotonic()))
                reply = b"ok" if status < 300 else b"not now" if status >= 500 else b"no such hook"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/beanmail"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "Endpoint":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]
