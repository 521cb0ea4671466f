"""Provider webhooks as one WSGI app: ``POST /ses`` (Amazon SES through SNS, the message's RSA
signature checked against the SNS certificate), ``/sendgrid`` (Event Webhook, ECDSA P-256),
``/postmark`` (basic auth: Postmark signs nothing), ``/mailgun`` (HMAC-SHA256). Mount it in
any WSGI app or serve it from the operator console.

An event reaches the same intake as a DSN. It is tied to a delivery by the VERP token the
message carried: SES hands back the envelope sender (``mail.source``), the others the value
``BEANMAIL_RELAY_PROVIDER`` put in their header. A request whose signature fails is refused
(403) and recorded nowhere; an event without a token of ours is recorded as unmatched.
Answers 503 while the store is down, so the provider retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ..logs import get_logger
from ..settings import Settings
from ..store import Store, StoreUnavailable
from .intake import Handled, Intake
from .parse import Failure, Report

MAX_BODY = 1024 * 1024
MAX_SKEW = 3600  # seconds a signed timestamp may be off (replays of old requests are refused)
_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


class Refused(Exception):
    """The request is not the provider's: 403 (or 401 for a missing password)."""

    def __init__(self, reason: str, status: str = "403 Forbidden") -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Event:
    kind: str  # bounce | complaint
    address: str
    token: str = ""  # ours, as the provider handed it back
    return_path: str = ""  # SES: the envelope sender, a VERP address
    status: str = ""
    diagnostic: str = ""
    permanent: bool | None = None
    action: str = "failed"


def fetch_certificate(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - an https URL checked below
        return response.read()


class WebhookApp:
    def __init__(self, settings: Settings, store: Store | None = None, *,
                 certificates: Callable[[str], bytes] = fetch_certificate,
                 now: Callable[[], float] = time.time) -> None:
        """``certificates``: how an SNS signing certificate is fetched (after its URL was
        checked to be Amazon's); cached per URL."""
        self.settings = settings
        self._store = store
        self.certificates = certificates
        self.now = now
        self._certs: dict[str, Any] = {}

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.store)
        return self._store

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        provider = environ.get("PATH_INFO", "").strip("/")
        handler = {"ses": self._ses, "sendgrid": self._sendgrid, "postmark": self._postmark,
                   "mailgun": self._mailgun}.get(provider)
        if handler is None:
            return _reply(start_response, "404 Not Found", {"error": "POST to /ses, /sendgrid, /postmark or /mailgun"})
        if environ.get("REQUEST_METHOD") != "POST":
            return _reply(start_response, "405 Method Not Allowed", {"error": "POST only"}, [("Allow", "POST")])
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            return _reply(start_response, "413 Payload Too Large", {"error": "too large"})
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            events = handler(body, environ)
            handled = self._apply(provider, events, body)
        except Refused as exc:
            get_logger().warning("webhook refused", provider=provider, reason=str(exc))
            extra = [("WWW-Authenticate", 'Basic realm="beanmail"')] if exc.status.startswith("401") else []
            return _reply(start_response, exc.status, {"error": str(exc)}, extra)
        except StoreUnavailable as exc:
            return _reply(start_response, "503 Service Unavailable", {"error": exc.reason}, [("Retry-After", "60")])
        except (ValueError, KeyError, TypeError) as exc:
            return _reply(start_response, "400 Bad Request", {"error": f"not a {provider} payload: {exc}"})
        return _reply(start_response, "200 OK", {"handled": [h.classification for h in handled]})

    def _apply(self, provider: str, events: list[Event], body: bytes) -> list[Handled]:
        intake = Intake(self.settings, self.store)
        out: list[Handled] = []
        raw = body.decode("utf-8", "replace")
        for e in events:
            if e.token:
                match, why = intake.match_token(e.token)
            elif e.return_path:
                match, why = intake.match([e.return_path])
            else:
                match, why = None, "the event carries no token of ours"
            if e.kind == "complaint":
                report = Report("webhook", feedback_type="abuse", complained=e.address)
            else:
                report = Report("webhook", [Failure(e.address.lower(), e.action, e.status, e.diagnostic,
                                                    permanent=e.permanent)])
            out += intake.apply(report, match, why, source=f"webhook:{provider}", raw=raw)
        return out

    # -- Amazon SES through SNS -----------------------------------------------------------------
    def _ses(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        envelope = json.loads(body)
        self._verify_sns(envelope)
        allowed = [a.strip() for a in self.settings.ses_topic_arns.split(",") if a.strip()]
        if envelope.get("TopicArn") not in allowed:
            raise Refused(f"topic {envelope.get('TopicArn')!r} is not in BEANMAIL_SES_TOPIC_ARNS")
        if envelope["Type"] == "SubscriptionConfirmation":
            # confirming is an operator's decision: visit SubscribeURL once (it is logged)
            get_logger().warning("SNS subscription awaiting confirmation", topic=envelope["TopicArn"],
                                 subscribe_url=envelope.get("SubscribeURL"))
            return []
        if envelope["Type"] != "Notification":
            return []
        message = json.loads(envelope["Message"])
        kind = message.get("notificationType") or message.get("eventType")
        source = message.get("mail", {}).get("source", "")
        if kind == "Bounce":
            bounce = message["bounce"]
            permanent = bounce.get("bounceType") == "Permanent"
            return [Event("bounce", r["emailAddress"], return_path=source, status=r.get("status", ""),
                          diagnostic=r.get("diagnosticCode", ""), permanent=permanent)
                    for r in bounce.get("bouncedRecipients", [])]
        if kind == "Complaint":
            complaint = message["complaint"]
            if complaint.get("complaintFeedbackType") == "not-spam":
                return []
            return [Event("complaint", r["emailAddress"], return_path=source)
                    for r in complaint.get("complainedRecipients", [])]
        return []

    def _verify_sns(self, m: dict[str, Any]) -> None:
        """Amazon SNS message signatures (SignatureVersion 1: SHA1, 2: SHA256 with RSA)."""
        url = m.get("SigningCertURL") or m.get("SigningCertUrl") or ""
        parts = urlsplit(url)
        if parts.scheme != "https" or not _SNS_HOST.match(parts.hostname or "") or not parts.path.endswith(".pem"):
            raise Refused(f"SigningCertURL {url!r} is not Amazon SNS's")
        if m.get("Type") == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        text = "".join(f"{n}\n{m[n]}\n" for n in names if n in m and m[n] is not None).encode()
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(m.get("SignatureVersion")))
        if algorithm is None:
            raise Refused(f"unknown SignatureVersion {m.get('SignatureVersion')!r}")
        if url not in self._certs:
            self._certs[url] = x509.load_pem_x509_certificate(self.certificates(url)).public_key()
        try:
            self._certs[url].verify(base64.b64decode(m["Signature"]), text, padding.PKCS1v15(), algorithm)
        except (InvalidSignature, ValueError) as exc:
            raise Refused("SNS signature does not verify") from exc

    # -- SendGrid Event Webhook ------------------------------------------------------------------
    def _sendgrid(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        if not self.settings.sendgrid_webhook_key:
            raise Refused("BEANMAIL_SENDGRID_WEBHOOK_KEY is not set")
        signature = environ.get("HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE", "")
        timestamp = environ.get("HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP", "")
        self._fresh(timestamp)
        key = serialization.load_der_public_key(base64.b64decode(self.settings.sendgrid_webhook_key))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise Refused("BEANMAIL_SENDGRID_WEBHOOK_KEY is not an ECDSA public key")
        try:
            key.verify(base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise Refused("SendGrid signature does not verify") from exc
        events = []
        for e in json.loads(body):
            token = str(e.get("beanmail", ""))
            if e.get("event") == "bounce":
                blocked = e.get("type") == "blocked"  # SendGrid: blocked is temporary, bounce is not
                events.append(Event("bounce", e["email"], token, status=str(e.get("status", "")),
                                    diagnostic=str(e.get("reason", "")), permanent=not blocked))
            elif e.get("event") == "spamreport":
                events.append(Event("complaint", e["email"], token))
        return events

    # -- Postmark --------------------------------------------------------------------------------
    def _postmark(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        password = self.settings.postmark_webhook_password
        if not password:
            raise Refused("BEANMAIL_POSTMARK_WEBHOOK_PASSWORD is not set")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        given = ""
        if auth.lower().startswith("basic "):
            try:
                given = base64.b64decode(auth[6:]).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = ""
        if not hmac.compare_digest(given.encode(), password.encode()):
            raise Refused("basic auth required", "401 Unauthorized")
        e = json.loads(body)
        token = str((e.get("Metadata") or {}).get("beanmail", ""))
        if e.get("RecordType") == "Bounce":
            kind = e.get("Type", "")
            if kind not in ("HardBounce", "SoftBounce", "Transient", "DnsError", "BadEmailAddress", "Blocked"):
                return []  # auto-replies, subscribe requests, ...
            return [Event("bounce", e["Email"], token, diagnostic=e.get("Description", "") or e.get("Details", ""),
                          permanent=kind in ("HardBounce", "BadEmailAddress"))]
        if e.get("RecordType") == "SpamComplaint":
            return [Event("complaint", e["Email"], token)]
        return []

    # -- Mailgun ---------------------------------------------------------------------------------
    def _mailgun(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        if not self.settings.mailgun_signing_key:
            raise Refused("BEANMAIL_MAILGUN_SIGNING_KEY is not set")
        payload = json.loads(body)
        sig = payload["signature"]
        self._fresh(str(sig["timestamp"]))
        expected = hmac.new(self.settings.mailgun_signing_key.encode(), f"{sig['timestamp']}{sig['token']}".encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(sig["signature"])):
            raise Refused("Mailgun signature does not verify")
        e = payload["event-data"]
        token = str((e.get("user-variables") or {}).get("beanmail", ""))
        if e.get("event") == "failed":
            status = e.get("delivery-status") or {}
            enhanced = str(status.get("enhanced-code") or "")
            return [Event("bounce", e["recipient"], token, status=enhanced,
                          diagnostic=str(status.get("message") or status.get("description") or ""),
                          permanent=e.get("severity") == "permanent")]
        if e.get("event") == "complained":
            return [Event("complaint", e["recipient"], token)]
        return []

    def _fresh(self, timestamp: str) -> None:
        try:
            skew = abs(self.now() - float(timestamp))
        except ValueError:
            raise Refused("no signed timestamp") from None
        if skew > MAX_SKEW:
            raise Refused(f"signed timestamp is {skew:.0f}s off: a replay?")


def with_webhooks(app: Callable[..., Iterable[bytes]], settings: Settings, prefix: str = "/webhooks",
                  **options: Any) -> Callable[..., Iterable[bytes]]:
    """``app`` with the webhooks mounted under ``prefix`` (ahead of its own authentication, which
    providers cannot pass: each proves itself its own way). For the console:
    ``make_server(host, port, with_webhooks(console, settings))``."""
    hooks = WebhookApp(settings, **options)

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == prefix or path.startswith(prefix + "/"):
            environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + prefix,
                       "PATH_INFO": path[len(prefix):]}
            return hooks(environ, start_response)
        return app(environ, start_response)
    return dispatch


def _reply(start_response: Callable[..., Any], status: str, payload: dict[str, Any],
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *(headers or [])])
    return [body]
