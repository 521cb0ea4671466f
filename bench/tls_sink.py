"""The relay-tls bench's receiver: aiosmtpd in a process of its own, STARTTLS and AUTH PLAIN
required (``--tls CERT KEY``) or neither, counting messages and sessions into a JSON file
(``--counts``) ten times a second, so the bench can wait for the n-th message.

    python bench/tls_sink.py --port P --counts FILE [--tls CERT KEY --login USER:PASSWORD]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Counting:
    def __init__(self) -> None:
        self.messages = 0
        self.tls_messages = 0
        self.peers: set[tuple[str, int]] = set()  # one per TCP connection: a session

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        self.messages += 1
        self.peers.add(session.peer)
        if server.transport.get_extra_info("ssl_object") is not None:
            self.tls_messages += 1
        return "250 2.0.0 Ok: queued"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--counts", required=True)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--login", default="bench:secret")
    args = ap.parse_args()
    handler = Counting()
    options: dict[str, object] = {}
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
        want = tuple(x.encode() for x in args.login.split(":", 1))

        def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == want
            return AuthResult(success=ok, handled=False)
        options = {"tls_context": context, "require_starttls": True, "authenticator": authenticator,
                   "auth_require_tls": True}
    controller = Controller(handler, hostname="127.0.0.1", port=args.port, server_hostname="sink.bench.example",
                            **options)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        tmp = f"{args.counts}.tmp"
        with open(tmp, "w") as f:
            json.dump({"messages": handler.messages, "tls_messages": handler.tls_messages,
                       "sessions": len(handler.peers)}, f)
        os.replace(tmp, args.counts)
        time.sleep(0.1)
    controller.stop()


if __name__ == "__main__":
    main()
