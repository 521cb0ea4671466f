"""The console as a WSGI app: routing, and the security every response shares (basic auth, CSRF
tokens on every POST, a restrictive Content-Security-Policy). Mount it in a web app with
``make_app(settings)``; links follow the mount point (SCRIPT_NAME)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote_plus, urlencode

from .. import redact
from ..logs import get_logger, mask_text
from ..ops import open_store
from ..settings import Settings
from ..store import Store, StoreCorrupt, StoreUnavailable
from .guard import LoginThrottle

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
]
CSRF_COOKIE = "beanmail_csrf"
MAX_FORM = 64 * 1024
STATUS = {200: "200 OK", 303: "303 See Other", 400: "400 Bad Request", 401: "401 Unauthorized",
          403: "403 Forbidden", 404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Payload Too Large",
          429: "429 Too Many Requests", 500: "500 Internal Server Error", 503: "503 Service Unavailable"}


@dataclass
class Request:
    environ: dict[str, Any]
    method: str
    path: str
    root: str  # where the app is mounted: "" or e.g. "/console"
    query: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> "Request":
        query = _fields(environ.get("QUERY_STRING", ""))
        cookie = SimpleCookie()
        try:
            cookie.load(environ.get("HTTP_COOKIE", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no cookie
            pass
        return cls(environ, environ.get("REQUEST_METHOD", "GET").upper(), environ.get("PATH_INFO", "") or "/",
                   environ.get("SCRIPT_NAME", "").rstrip("/"), query,
                   cookies={k: m.value for k, m in cookie.items()})

    def read_form(self) -> bool:
        """False when the body is too large to be a console form."""
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_FORM:
            return False
        raw = self.environ["wsgi.input"].read(length) if length else b""
        self.form = _fields(raw.decode("utf-8", "replace"))
        return True


def _fields(encoded: str) -> dict[str, str]:
    """A query string's or form's fields, the first of each name; NUL characters, which no
    field of the console means and PostgreSQL's text refuses, dropped."""
    return {k.replace("\x00", ""): v[0].replace("\x00", "")
            for k, v in parse_qs(encoded, keep_blank_values=True).items()}


@dataclass
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def redirect(cls, req: Request, path: str, **message: str) -> "Response":
        target = req.root + path + (("&" if "?" in path else "?") + urlencode(message) if message else "")
        return cls(303, b"", headers=[("Location", target)])

    @classmethod
    def text(cls, status: int, text: str) -> "Response":
        return cls(status, text, "text/plain; charset=utf-8")


Handler = Callable[["Console", Request], Response]


class Console:
    def __init__(self, settings: Settings, password: str | None = None) -> None:
        self.settings = settings
        # the pages of jobs (buried, a job, deferred, events, mailouts) read one server, as job
        # ids are a server's own: a fleet's first; the overview and /metrics read every server
        urls = settings.beanstalk_urls
        self.server = settings if len(urls) < 2 else settings.replace(beanstalk_url=urls[0])
        self.password = settings.web_password if password is None else password
        self.masked = settings.mask_addresses
        self.secret = secrets.token_bytes(32)  # CSRF tokens and opaque references; new at every start
        self.logins = LoginThrottle()
        self._store: Store | None = None
        self._store_lock = threading.RLock()
        from . import pages  # the routes, which need this module's types

        self.routes: dict[tuple[str, str], Handler] = pages.routes()

    # -- the store, shared by the request threads -------------------------------------------------
    def with_store(self, fn: Callable[[Store], Any]) -> Any:
        """Run ``fn`` with the one store connection; StoreUnavailable / StoreCorrupt go through."""
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.settings)
            return fn(self._store)

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- security ---------------------------------------------------------------------------------
    def login_refusal(self, req: Request) -> Response | None:
        """None when the request may go on; else 401 (no or a wrong password: each wrong one
        logged, and its client made to wait) or 429 (a password given while its client is still
        waiting: not looked at)."""
        if not self.password:
            return None
        client = str(req.environ.get("REMOTE_ADDR", ""))
        given = req.environ.get("HTTP_AUTHORIZATION")
        wait = self.logins.wait(client) if given is not None else 0.0
        if wait > 0:
            resp = Response.text(429, f"refused: too many failed logins from {client}; try again in"
                                      f" {wait:.0f} s\n")
            resp.headers.append(("Retry-After", str(max(1, round(wait + 0.5)))))
            return resp
        if given is not None and self.authorized(req):
            self.logins.succeeded(client)
            return None
        if given is not None:
            failures, delay = self.logins.failed(client)
            get_logger().warning("console login failed", client=client, path=req.path[:200], failures=failures,
                                 wait=delay)
        resp = Response.text(401, "authentication required\n")
        resp.headers.append(("WWW-Authenticate", 'Basic realm="beanmail", charset="UTF-8"'))
        return resp

    def authorized(self, req: Request) -> bool:
        if not self.password:
            return True
        header = req.environ.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            _, _, given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), self.password.encode())

    def csrf_token(self, req: Request) -> tuple[str, str | None]:
        """(the form token, a new cookie nonce to set or None)."""
        nonce = req.cookies.get(CSRF_COOKIE)
        fresh = None
        if not nonce or len(nonce) < 16:
            nonce = fresh = secrets.token_urlsafe(24)
        return self.sign(nonce), fresh

    def sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, req: Request) -> bool:
        """The form's token must be this server's signature of the browser's own cookie, which
        another site can neither read nor set; a cross-site Origin is refused besides."""
        origin = req.environ.get("HTTP_ORIGIN")
        host = req.environ.get("HTTP_HOST", "")
        if origin and origin != "null" and origin.split("://", 1)[-1] != host:
            return False
        if req.environ.get("HTTP_SEC_FETCH_SITE") in ("cross-site", "same-site"):
            return False
        nonce, token = req.cookies.get(CSRF_COOKIE, ""), req.form.get("csrf", "")
        return bool(nonce and token) and hmac.compare_digest(self.sign(nonce), token)

    # -- WSGI -------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = Request.from_environ(environ)
        new_cookie: str | None = None
        refusal = None if req.path == "/healthz" else self.login_refusal(req)
        if refusal is not None:
            resp = refusal
        else:
            resp, new_cookie = self.dispatch(req)
        # no page shows a password from a URL or a secret setting, whatever a message repeated
        body = redact.text(resp.body).encode("utf-8") if isinstance(resp.body, str) else resp.body
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(body))), *SECURITY_HEADERS,
                   *resp.headers]
        if new_cookie:
            path = req.root or "/"
            secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""  # behind TLS
            headers.append(("Set-Cookie", f"{CSRF_COOKIE}={new_cookie}; Path={path}; HttpOnly; SameSite=Strict{secure}"))
        start_response(STATUS.get(resp.status, f"{resp.status} Status"), headers)
        line = req.path + ("?" + unquote_plus(environ["QUERY_STRING"]) if environ.get("QUERY_STRING") else "")
        line = "".join(c if c.isprintable() else "?" for c in line[:300])  # one log line, however encoded
        get_logger().info("web request", client=environ.get("REMOTE_ADDR", ""), method=req.method[:16],
                          path=mask_text(line) if self.masked else line, status=resp.status)
        return [b"" if req.method == "HEAD" else body]

    def dispatch(self, req: Request) -> tuple[Response, str | None]:
        from .pages import route

        handler, args = route(self.routes, req)
        if handler is None:
            return args, None  # type: ignore[return-value]
        token, fresh = self.csrf_token(req)
        req.environ["beanmail.csrf"] = token
        if req.method == "POST":
            if not req.read_form():
                return Response.text(413, "form too large\n"), None
            if not self.csrf_ok(req):
                return Response.text(403, "refused: the form's CSRF token is missing or wrong; nothing was"
                                          " changed. Reload the page and try again.\n"), fresh
        try:
            return handler(self, req, *args), fresh
        except (StoreUnavailable, StoreCorrupt) as exc:
            self.close()  # try a fresh connection next time
            return Response.text(503, f"the delivery store is not available: {exc}\n"), fresh
        except Exception as exc:  # noqa: BLE001 - one page's bug is logged, never a traceback to the browser
            get_logger().exception("console page failed", path=req.path, error=repr(exc))
            return Response.text(500, "the console failed on this page; its log says why\n"), fresh


def make_app(settings: Settings, password: str | None = None) -> Console:
    """The console for mounting inside a web application (e.g. under /beanmail with werkzeug's
    DispatcherMiddleware, or Django/Flask via a WSGI mount); put your own authentication in
    front of it or set ``password``."""
    return Console(settings, password)
