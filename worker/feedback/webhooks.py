"""Provider webhooks as one WSGI app: ``POST /ses`` (Amazon SES through SNS, the message's RSA
signature checked against the SNS certificate), ``/sendgrid`` (Event Webhook, ECDSA P-256),
``/postmark`` (basic auth: Postmark signs nothing), ``/mailgun`` (HMAC-SHA256). Mount it in
any WSGI app or serve it from the operator console.

What each provider's events mean is read in provider_events.py. An event reaches the same intake as a DSN,
tied to a delivery by the VERP token the message carried (SES hands back the envelope sender,
``mail.source``; the others the value ``BEANMAIL_RELAY_PROVIDER`` put in their header) and to
the one recipient the provider's signed event names. A request whose signature fails, or whose
signed timestamp is over an hour off, is refused (403) and recorded nowhere; a body that is not
the provider's payload is answered 400 with the reason; an event id seen before (SNS: its
MessageId) counts once; an event without a token of ours is recorded as unmatched. Answers 503
while the store is down, so the provider retries.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import time
import urllib.request
from email.utils import parseaddr
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ..logs import get_logger
from ..settings import Settings
from ..store import Store, StoreUnavailable
from .intake import Handled, Intake, Match
from .parse import Failure, Report
from .provider_events import (Event, Malformed, _json, _kind, _mailgun_events, _object, _postmark_events,
                              _sendgrid_event, _ses_events, _text)

MAX_BODY = 1024 * 1024
MAX_SKEW = 3600  # seconds a signed timestamp may be off (replays of old requests are refused)
# Amazon's SNS endpoints only: sns.<region>.amazonaws.com (sns.s3.amazonaws.com is an S3 bucket
# anyone could have named "sns"); the certificates are SimpleNotificationService-<hex>.pem
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-\d{1,2}\.amazonaws\.com")
_SNS_CERT_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]+\.pem")


class Refused(Exception):
    """The request is not the provider's: 403 (or 401 for a missing password)."""

    def __init__(self, reason: str, status: str = "403 Forbidden") -> None:
        super().__init__(reason)
        self.status = status


class CertificateUnavailable(Exception):
    """The SNS signing certificate could not be fetched: 503, so SNS retries."""


def fetch_certificate(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - an https URL checked below
        return response.read()


# -- reading JSON that may be anything -------------------------------------------------------------
class WebhookApp:
    max_body = MAX_BODY  # bytes a request may carry

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
        handlers = self.handlers()
        handler = handlers.get(provider)
        if handler is None:
            return _reply(start_response, "404 Not Found", {"error": "POST to " + ", ".join(f"/{p}" for p in handlers)})
        if environ.get("REQUEST_METHOD") != "POST":
            return _reply(start_response, "405 Method Not Allowed", {"error": "POST only"}, [("Allow", "POST")])
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return _reply(start_response, "400 Bad Request", {"error": "Content-Length is not a number of bytes"})
        if length > self.max_body:
            return _reply(start_response, "413 Payload Too Large", {"error": "too large"})
        body = environ["wsgi.input"].read(length) if length else b""
        log = get_logger()
        try:
            events = handler(body, environ)
        except Refused as exc:
            log.warning("webhook refused", provider=provider, reason=str(exc))
            extra = [("WWW-Authenticate", 'Basic realm="beanmail"')] if exc.status.startswith("401") else []
            return _reply(start_response, exc.status, {"error": str(exc)}, extra)
        except CertificateUnavailable as exc:
            return _reply(start_response, "503 Service Unavailable", {"error": str(exc)}, [("Retry-After", "60")])
        except (Malformed, ValueError, LookupError, TypeError, AttributeError, RecursionError) as exc:
            # whatever the body is (a list, a string, null, deep nesting, not UTF-8), it is no event
            reason = str(exc) if isinstance(exc, Malformed) else f"{type(exc).__name__}: {exc}"
            log.warning("webhook body refused", provider=provider, reason=reason[:300])
            return _reply(start_response, "400 Bad Request", {"error": f"not a {provider} payload: {reason[:300]}"})
        try:
            handled = self._apply(provider, events, body)
        except StoreUnavailable as exc:
            return _reply(start_response, "503 Service Unavailable", {"error": exc.reason}, [("Retry-After", "60")])
        return _reply(start_response, "200 OK", {"handled": handled})

    def handlers(self) -> dict[str, Callable[[bytes, dict[str, Any]], list[Any]]]:
        """Each path's reader: the request's body and environ -> what ``_apply`` takes."""
        return {"ses": self._ses, "sendgrid": self._sendgrid, "postmark": self._postmark, "mailgun": self._mailgun}

    def _apply(self, provider: str, events: list[Any], body: bytes) -> list[str]:
        return [h.classification for h in self._feedback(provider, events, body)]

    def _feedback(self, provider: str, events: list[Event], body: bytes) -> list[Handled]:
        intake = Intake(self.settings, self.store)
        out: list[Handled] = []
        raw = body.decode("utf-8", "replace")
        source = f"webhook:{provider}"
        for e in events:
            if e.event_id and self.store.webhook_event_seen(provider, e.event_id):
                get_logger().info("webhook event seen before: not counted again", provider=provider,
                                  event_id=e.event_id[:80])
                out.append(Handled("", "replay", e.address))
                continue
            match, why = self._match(intake, e)
            if e.kind == "ignored":
                out.append(intake.ignore(source=source, address=e.address, detail=e.note, raw=raw,
                                         key=match.key if match else ""))
            elif e.kind == "unsubscribe":
                out.append(intake.unsubscribe(match, why, e.address, source=source, detail=e.note, raw=raw))
            elif e.kind == "complaint":
                report = Report("webhook", feedback_type="abuse", complained=e.address.lower())
                out += intake.apply(report, match, why, source=source, raw=raw)
            else:
                action = "delayed" if e.kind == "delayed" else "failed"
                report = Report("webhook", [Failure(e.address.lower(), action, e.status, e.diagnostic,
                                                    permanent=e.permanent)])
                out += intake.apply(report, match, why, source=source, raw=raw)
            if e.event_id:
                self.store.first_webhook_event(provider, e.event_id)
        return out

    def _match(self, intake: Intake, e: Event) -> tuple[Match | None, str]:
        """The delivery the event's token names, narrowed to the recipient the event names."""
        if e.token:
            match, why = intake.match_token(e.token)
        elif e.return_path:  # SES may give it with a display name
            match, why = intake.match([parseaddr(e.return_path)[1] or e.return_path])
        else:
            return None, "the event carries no token of ours"
        if match is None or not e.address:
            return match, why
        narrowed = match.narrowed(e.address)
        if narrowed is None:
            return None, f"the event names {e.address[:200]}, not a recipient of {match.key}"
        return narrowed, ""

    # -- Amazon SES through SNS -----------------------------------------------------------------
    def _ses(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        envelope = self.sns_notification(body)
        if envelope is None:
            return []
        sns_id, topic = _text(envelope, "MessageId", required=True), _text(envelope, "TopicArn")
        text = _text(envelope, "Message")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            # the topic may carry more than SES's events: a correctly signed notification is kept
            return [Event("ignored", "", event_id=sns_id, note=f"SNS notification on {topic} whose Message is"
                                                                   " not an SES event (not a JSON object)")]
        return _ses_events(message, sns_id)

    def sns_notification(self, body: bytes) -> dict[str, Any] | None:
        """The SNS message in ``body`` once its signature and topic are checked; None when it is
        no Notification (a subscription confirmation waits for an operator: it is logged)."""
        envelope = _object(_json(body), "the SNS message")
        self._verify_sns(envelope)
        allowed = [a.strip() for a in self.settings.ses_topic_arns.split(",") if a.strip()]
        topic = _text(envelope, "TopicArn")
        if topic not in allowed:
            raise Refused(f"topic {topic!r} is not in BEANMAIL_SES_TOPIC_ARNS")
        kind = _text(envelope, "Type")
        if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            # confirming is an operator's decision: visit SubscribeURL once (it is logged)
            get_logger().warning(f"SNS {kind}: awaiting an operator", topic=topic,
                                 subscribe_url=_text(envelope, "SubscribeURL") or None)
            return None
        return envelope if kind == "Notification" else None

    def _verify_sns(self, m: dict[str, Any]) -> None:
        """Amazon SNS message signatures (SignatureVersion 1: SHA1, 2: SHA256 with RSA), by a
        certificate from sns.<region>.amazonaws.com, over a Timestamp less than an hour off."""
        url = _text(m, "SigningCertURL") or _text(m, "SigningCertUrl")
        parts = urlsplit(url)
        if (parts.scheme != "https" or parts.netloc != parts.hostname or not _SNS_HOST.fullmatch(parts.netloc)
                or not _SNS_CERT_PATH.fullmatch(parts.path) or parts.query or parts.fragment):
            raise Refused(f"SigningCertURL {url[:200]!r} is not Amazon SNS's")
        if _text(m, "Type") == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        text = "".join(f"{n}\n{_text(m, n)}\n" for n in names if m.get(n) is not None).encode()
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(_text(m, "SignatureVersion"))
        if algorithm is None:
            raise Refused(f"unknown SignatureVersion {_text(m, 'SignatureVersion')[:20]!r}")
        if url not in self._certs:
            try:
                pem = self.certificates(url)
            except OSError as exc:
                raise CertificateUnavailable(f"SNS certificate {url} not fetched: {exc}") from None
            try:
                self._certs[url] = x509.load_pem_x509_certificate(pem).public_key()
            except ValueError as exc:
                raise Refused(f"SigningCertURL {url!r} holds no certificate") from exc
        try:
            self._certs[url].verify(base64.b64decode(_text(m, "Signature", required=True)), text,
                                    padding.PKCS1v15(), algorithm)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise Refused("SNS signature does not verify") from exc
        stamp = _text(m, "Timestamp")
        try:
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
        except ValueError:
            raise Refused(f"SNS Timestamp {stamp[:40]!r} is not a time") from None
        self._fresh(str(when.timestamp()))

    # -- SendGrid Event Webhook ------------------------------------------------------------------
    def _sendgrid(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        self.check_sendgrid(body, environ, self.settings.sendgrid_webhook_key, "BEANMAIL_SENDGRID_WEBHOOK_KEY")
        batch = _json(body)
        if not isinstance(batch, list):
            raise Malformed(f"the body is {_kind(batch)}, not a list of events")
        events = []
        for n, item in enumerate(batch):
            event = _sendgrid_event(_object(item, f"event {n}"))
            if event is not None:
                events.append(event)
        return events

    def check_sendgrid(self, body: bytes, environ: dict[str, Any], public_key: str, setting: str) -> None:
        """SendGrid's ECDSA P-256 signature over the signed timestamp and the body, by ``public_key``."""
        self.require(public_key, setting)
        signature = environ.get("HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE", "")
        timestamp = environ.get("HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP", "")
        self._fresh(timestamp)
        key = serialization.load_der_public_key(base64.b64decode(public_key))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise Refused(f"{setting} is not an ECDSA public key")
        try:
            key.verify(base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise Refused("SendGrid signature does not verify") from exc

    # -- Postmark --------------------------------------------------------------------------------
    def _postmark(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        self.check_postmark(environ)
        return _postmark_events(_object(_json(body), "the body"))

    def check_postmark(self, environ: dict[str, Any]) -> None:
        """Postmark signs nothing: the webhook URL carries a password (basic auth)."""
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

    # -- Mailgun ---------------------------------------------------------------------------------
    def _mailgun(self, body: bytes, environ: dict[str, Any]) -> list[Event]:
        self.require(self.settings.mailgun_signing_key, "BEANMAIL_MAILGUN_SIGNING_KEY")  # before reading the body
        payload = _object(_json(body), "the body")
        sig = _object(payload.get("signature"), "'signature'")
        self.check_mailgun(_text(sig, "timestamp", required=True), _text(sig, "token", required=True),
                           _text(sig, "signature"))
        return _mailgun_events(_object(payload.get("event-data"), "'event-data'"))

    def check_mailgun(self, timestamp: str, token: str, signature: str) -> None:
        """Mailgun's HMAC-SHA256 of timestamp and token with the signing key, the timestamp fresh."""
        self.require(self.settings.mailgun_signing_key, "BEANMAIL_MAILGUN_SIGNING_KEY")
        self._fresh(timestamp)
        expected = hmac.new(self.settings.mailgun_signing_key.encode(), f"{timestamp}{token}".encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Refused("Mailgun signature does not verify")

    @staticmethod
    def require(value: str, setting: str) -> None:
        """A provider's key or password must be set: without it no request is the provider's."""
        if not value:
            raise Refused(f"{setting} is not set")

    def _fresh(self, timestamp: str) -> None:
        try:
            skew = abs(self.now() - float(timestamp))
        except ValueError:
            raise Refused("no signed timestamp") from None
        if not skew <= MAX_SKEW:
            raise Refused(f"signed timestamp is {skew:.0f}s off: a replay?")


# -- what each provider's events mean --------------------------------------------------------------
def with_webhooks(app: Callable[..., Iterable[bytes]], settings: Settings, prefix: str = "/webhooks",
                  **options: Any) -> Callable[..., Iterable[bytes]]:
    """``app`` with the webhooks mounted under ``prefix``, the inbound (reply) ones under
    ``prefix/inbound`` (ahead of its own authentication, which
    providers cannot pass: each proves itself its own way). For the console:
    ``make_server(host, port, with_webhooks(console, settings))``."""
    from ..events.inbound_webhooks import INBOUND, InboundWebhookApp

    hooks = WebhookApp(settings, **options)
    replies = InboundWebhookApp(settings, **options)

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for mount, target in ((prefix + INBOUND, replies), (prefix, hooks)):
            if path == mount or path.startswith(mount + "/"):
                environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + mount,
                           "PATH_INFO": path[len(mount):]}
                return target(environ, start_response)
        return app(environ, start_response)
    return dispatch


def _reply(start_response: Callable[..., Any], status: str, payload: dict[str, Any],
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *(headers or [])])
    return [body]
