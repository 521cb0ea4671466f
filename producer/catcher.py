"""Read what a development mail catcher caught, for tests and scripts: MailCatcher's API
(``/messages``, ``/messages/:id.source``) and maildev's (``/api/email``, ``/api/email/:id/source``).

Messages come back as parsed ``email.message.EmailMessage`` objects, so a test asserts on the
real headers and parts whichever catcher runs.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Callable


class Catcher:
    def __init__(self, url: str = "http://127.0.0.1:1080", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._flavour: str | None = None

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=self.timeout) as resp:
            return resp.read()

    def _request(self, method: str, path: str) -> None:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=self.timeout):
            pass

    @property
    def flavour(self) -> str:
        """``maildev`` or ``mailcatcher``, by which API answers."""
        if self._flavour is None:
            try:
                json.loads(self._get("/api/email"))
                self._flavour = "maildev"
            except (urllib.error.HTTPError, ValueError):
                json.loads(self._get("/messages"))
                self._flavour = "mailcatcher"
        return self._flavour

    def _ids(self) -> list[str]:
        if self.flavour == "maildev":
            return [str(m["id"]) for m in json.loads(self._get("/api/email"))]
        return [str(m["id"]) for m in json.loads(self._get("/messages"))]

    def source(self, message_id: str) -> bytes:
        path = f"/api/email/{message_id}/source" if self.flavour == "maildev" else f"/messages/{message_id}.source"
        return self._get(path)

    def messages(self) -> list[EmailMessage]:
        return [message_from_bytes(self.source(i), policy=policy.default) for i in self._ids()]  # type: ignore[misc]

    def clear(self) -> None:
        self._request("DELETE", "/api/email/all" if self.flavour == "maildev" else "/messages")

    def wait_for(self, count: int, timeout: float = 30.0,
                 where: Callable[[EmailMessage], bool] = lambda m: True) -> list[EmailMessage]:
        """The caught messages matching ``where`` once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if where(m)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} messages in the catcher after {timeout}s")
            time.sleep(0.1)
