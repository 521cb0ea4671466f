"""One-click unsubscribe (RFC 8058): a signed, expiring token in the List-Unsubscribe URL, and a
small WSGI app, mountable in any web application, that records the unsubscribe on POST.

A GET only shows a confirmation button: mail scanners follow links, and RFC 8058 requires that
merely fetching the URL unsubscribes nobody.

The secret may name several keys (``"new,old"`` or a sequence, as BEANMAIL_SECRET): the first
signs new tokens, every one verifies, so links already in people's mailboxes keep working after
a rotation for as long as the old key stays listed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from .envelope import Secret, keys

Record = Callable[[str, str], None]  # (address, list id)


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(address: str, secret: Secret, *, list_id: str = "", ttl: float = 60 * 86400,
               now: float | None = None) -> str:
    payload = json.dumps({"a": address.lower(), "l": list_id, "e": int((now or time.time()) + ttl)},
                         separators=(",", ":")).encode()
    mac = _mac(keys(secret)[0], payload)
    return f"{_b64(payload)}.{_b64(mac)}"


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:16]


def verify_token(token: str, secret: Secret, *, now: float | None = None) -> tuple[str, str]:
    """The (address, list id) a token was made for, if any of the secret's keys made it;
    TokenError if forged, damaged or expired."""
    try:
        payload_part, mac_part = token.split(".")
        payload, mac = _unb64(payload_part), _unb64(mac_part)
    except ValueError:
        raise TokenError("malformed token") from None
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in keys(secret)):
        raise TokenError("bad signature")
    data = json.loads(payload)
    if (now or time.time()) > data["e"]:
        raise TokenError("expired")
    return data["a"], data["l"]


def list_unsubscribe_headers(address: str, secret: Secret, *, url: str, mailto: str = "", list_id: str = "",
                             ttl: float = 60 * 86400) -> dict[str, str]:
    token = make_token(address, secret, list_id=list_id, ttl=ttl)
    sep = "&" if "?" in url else "?"
    targets = [f"<{url}{sep}token={token}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe%20{token}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


class UnsubscribeApp:
    """WSGI: ``POST ?token=…`` (the one-click POST of RFC 8058, or the confirmation form) records
    the unsubscribe through ``record(address, list_id)``; with the worker's store that is
    ``lambda a, l: Store(dsn).suppress(a, f"unsubscribed from {l}", "unsubscribe")``."""

    def __init__(self, secret: Secret, record: Record, *, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("an unsubscribe secret is required")
        keys(secret)  # a secret naming no key fails here, not at the first click
        self.secret = secret
        self.record = record
        self.clock = clock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        form: dict[str, list[str]] = {}
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            body = environ["wsgi.input"].read(min(length, 65536)) if length > 0 else b""
            form = parse_qs(body.decode("utf-8", "replace"))
        token = (query.get("token") or form.get("token") or [""])[0]
        if method not in ("GET", "POST"):
            return self._reply(start_response, "405 Method Not Allowed", "Use POST to unsubscribe.",
                               [("Allow", "GET, POST")])
        try:
            address, list_id = verify_token(token, self.secret, now=self.clock())
        except TokenError as exc:
            return self._reply(start_response, "400 Bad Request", f"This unsubscribe link is not valid ({exc}).")
        if method == "GET":
            form_html = (f'<form method="post"><input type="hidden" name="token" value="{html.escape(token)}">'
                         f'<button type="submit">Unsubscribe {html.escape(address)}</button></form>')
            return self._reply(start_response, "200 OK", form_html, raw=True)
        self.record(address, list_id)
        return self._reply(start_response, "200 OK", f"{address} is unsubscribed.")

    @staticmethod
    def _reply(start_response: Callable[..., Any], status: str, text: str,
               headers: list[tuple[str, str]] | None = None, raw: bool = False) -> list[bytes]:
        body = (f"<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
                f"<p>{text if raw else html.escape(text)}</p>").encode()
        start_response(status, [("Content-Type", "text/html; charset=utf-8"),
                                ("Content-Length", str(len(body))), *(headers or [])])
        return [body]
