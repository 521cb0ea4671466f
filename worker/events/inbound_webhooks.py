"""Replies that reach us through a provider's inbound webhook, as one WSGI app (the console mounts
it at ``/webhooks/inbound``): ``POST /ses`` (SES receipt rule with an SNS action, the SNS
signature and topic checked as for SES bounces), ``/postmark`` (Postmark inbound, basic auth as
for its bounce webhook), ``/mailgun`` (a Mailgun route's ``forward()``: the form post, or the raw
message on a URL ending in ``mime``, HMAC-signed as its event webhooks), ``/sendgrid`` (SendGrid
Inbound Parse, parsed or raw, ECDSA-signed by its security policy with BEANMAIL_SENDGRID_INBOUND_KEY).

Each request is checked the way worker/feedback/webhooks.py checks that provider's bounces (403
forged or stale, 400 not its payload, 503 while the store is down), then its message, the raw
MIME when the provider passes it on or rebuilt from the parsed fields (all headers, the text
and HTML bodies) when not, goes through the same ``handle`` as a message piped into
`beanmail inbound`: one ``message.replied`` event, or refused and recorded (a forged or expired
address, an auto-reply, a bounce, a loop) with 200, so the provider does not send it again.
A provider's own message id seen before counts once.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import HeaderParser
from email.utils import formataddr
from typing import Any, Callable, Mapping

import multipart

from ..feedback.provider_events import Malformed, _inner, _json, _object, _text
from ..feedback.webhooks import WebhookApp
from .authentication import from_verdicts
from .inbound import handle

INBOUND = "/inbound"  # where with_webhooks mounts this app, under its own prefix
SEEN = "inbound:"  # + provider: the provider ids handled, in the store's table of webhook events seen
_BODY_HEADERS = {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
_SENDGRID_VERDICT = re.compile(r":\s*(\w+)\s*\}?\s*$")


@dataclass(frozen=True)
class Received:
    """One message a provider passed on: its raw MIME, envelope recipient and verdicts."""
    raw: bytes
    recipient: str = ""
    authentication: Mapping[str, str] = field(default_factory=dict)
    provider_id: str = ""  # the provider's id of this delivery: a replayed request counts once


class InboundWebhookApp(WebhookApp):
    max_body = 40 * 1024 * 1024  # a reply with attachments (Mailgun and SendGrid post them; they are not kept)

    def handlers(self) -> dict[str, Callable[[bytes, dict[str, Any]], list[Any]]]:
        return {"ses": self._ses_received, "postmark": self._postmark_inbound, "mailgun": self._mailgun_route,
                "mailgun/mime": self._mailgun_route,  # Mailgun posts the raw message to a URL ending in "mime"
                "sendgrid": self._sendgrid_parse}

    def _apply(self, provider: str, events: list[Any], body: bytes) -> list[str]:
        provider = provider.partition("/")[0]
        out = []
        for message in events:
            assert isinstance(message, Received)
            seen = message.provider_id and self.store.webhook_event_seen(SEEN + provider, message.provider_id)
            if seen:
                out.append("replay")
                continue
            result = handle(self.settings, self.store, message.raw, message.recipient, source=f"webhook:{provider}",
                            authentication=message.authentication or None)
            out.append(result.outcome)
            if message.provider_id:
                self.store.first_webhook_event(SEEN + provider, message.provider_id)
        return out

    # -- Amazon SES receipt rule, SNS action -------------------------------------------------------
    def _ses_received(self, body: bytes, environ: dict[str, Any]) -> list[Received]:
        envelope = self.sns_notification(body)
        if envelope is None:
            return []
        try:
            message = _object(json.loads(_text(envelope, "Message")), "the SNS Message")
        except ValueError:
            raise Malformed("the SNS Message is not JSON") from None
        if _text(message, "notificationType") != "Received":
            raise Malformed(f"notificationType {_text(message, 'notificationType')!r}, not Received:"
                            " this topic is for replies")
        receipt = _inner(message, "receipt")
        content = _text(message, "content")
        if not content:
            raise Malformed("no 'content': the receipt rule's action must be SNS (S3 and Lambda pass no message)")
        encoding = _text(_inner(receipt, "action"), "encoding").upper()
        try:
            raw = base64.b64decode(content, validate=True) if encoding == "BASE64" else content.encode("utf-8")
        except (binascii.Error, ValueError):
            raise Malformed("'content' is not the base64 its action's encoding says") from None
        recipients = receipt.get("recipients") or []
        verdicts = {m: _text(_inner(receipt, f"{m}Verdict"), "status") for m in ("dkim", "dmarc", "spf")}
        return [Received(raw, str(recipients[0]) if recipients else "", from_verdicts("amazonses.com", verdicts),
                         _text(envelope, "MessageId"))]

    # -- Postmark inbound ------------------------------------------------------------------------
    def _postmark_inbound(self, body: bytes, environ: dict[str, Any]) -> list[Received]:
        self.check_postmark(environ)
        m = _object(_json(body), "the body")
        raw = _text(m, "RawEmail")
        if raw:
            return [Received(raw.encode("utf-8"), _text(m, "OriginalRecipient"), provider_id=_text(m, "MessageID"))]
        sender = _inner(m, "FromFull")
        headers = [(_text(h, "Name"), _text(h, "Value")) for h in _list(m, "Headers")]
        top = [("From", formataddr((_text(sender, "Name"), _text(sender, "Email"))) if sender else _text(m, "From")),
               ("To", _text(m, "To")), ("Cc", _text(m, "Cc")), ("Subject", _text(m, "Subject")),
               ("Date", _text(m, "Date"))]
        if not any(name.lower() == "message-id" for name, _ in headers):
            top.append(("Message-ID", f"<{_text(m, 'MessageID')}@postmark>" if m.get("MessageID") else ""))
        raw_message = rebuilt(top + headers, _text(m, "TextBody"), _text(m, "HtmlBody"))
        return [Received(raw_message, _text(m, "OriginalRecipient"), provider_id=_text(m, "MessageID"))]

    # -- Mailgun route, forward() ----------------------------------------------------------------
    def _mailgun_route(self, body: bytes, environ: dict[str, Any]) -> list[Received]:
        self.require(self.settings.mailgun_signing_key, "BEANMAIL_MAILGUN_SIGNING_KEY")  # before reading the body
        form = _form(body, environ)
        self.check_mailgun(form.get("timestamp", ""), form.get("token", ""), form.get("signature", ""))
        recipient = form.get("recipient", "")
        if form.get("body-mime"):
            return [Received(form["body-mime"].encode("utf-8"), recipient, provider_id=form.get("token", ""))]
        try:
            headers = [(str(n), str(v)) for n, v in json.loads(form.get("message-headers") or "[]")]
        except (ValueError, TypeError):
            raise Malformed("'message-headers' is not a JSON list of [name, value]") from None
        if not headers:
            raise Malformed("neither 'body-mime' nor 'message-headers': not a Mailgun route's post")
        return [Received(rebuilt(headers, form.get("body-plain", ""), form.get("body-html", "")), recipient,
                         provider_id=form.get("token", ""))]

    # -- SendGrid Inbound Parse ------------------------------------------------------------------
    def _sendgrid_parse(self, body: bytes, environ: dict[str, Any]) -> list[Received]:
        self.check_sendgrid(body, environ, self.settings.sendgrid_inbound_key, "BEANMAIL_SENDGRID_INBOUND_KEY")
        form = _form(body, environ)
        try:
            envelope = json.loads(form.get("envelope") or "{}")
            recipient = str((envelope.get("to") or [""])[0])
        except (ValueError, TypeError, AttributeError, IndexError):
            raise Malformed("'envelope' is not SendGrid's JSON envelope") from None
        verdicts = {"dkim": _sendgrid_verdict(form.get("dkim", "")), "spf": form.get("SPF", "")}
        auth = from_verdicts("mx.sendgrid.net", verdicts)
        if form.get("email"):  # "POST the raw, full MIME message"
            return [Received(form["email"].encode("utf-8"), recipient, auth)]
        if not form.get("headers"):
            raise Malformed("neither 'email' nor 'headers': not a SendGrid Inbound Parse post")
        headers = list(HeaderParser(policy=policy.default).parsestr(form["headers"]).raw_items())
        return [Received(rebuilt(headers, form.get("text", ""), form.get("html", "")), recipient, auth)]


def rebuilt(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """A message made again from a provider's parsed fields: every header but those of the body
    (its parts are new), then the text and the HTML as alternatives."""
    msg = EmailMessage(policy=policy.SMTP)
    for name, value in headers:
        if name and value and name.lower() not in _BODY_HEADERS:
            value = " ".join(value.split())  # unfolded: a provider may hand folded or CRLF-laden values
            try:
                msg[name] = value
            except Exception:  # noqa: BLE001 - the email package raises on some values: kept as they came,
                msg.set_raw(name, value.encode("ascii", "replace").decode())  # for handle to refuse, recorded
    msg.set_content(text or "")
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def _list(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name) or []
    if not isinstance(value, list):
        raise Malformed(f"{name!r} is not a list")
    return [_object(v, f"an entry of {name!r}") for v in value]


FORM_PARTS = 1000  # a reply's fields and attachments in one form post (multipart's default, 128, refused 130 files)


def _form(body: bytes, environ: dict[str, Any]) -> dict[str, str]:
    """A form post's fields (multipart/form-data or urlencoded, by the ``multipart`` package);
    uploaded files (attachments) are not kept."""
    if not multipart.is_form_request(environ):
        raise Malformed(f"Content-Type {environ.get('CONTENT_TYPE', '')[:80]!r} is not a form post")
    forms, files = multipart.parse_form_data({**environ, "wsgi.input": io.BytesIO(body),
                                              "CONTENT_LENGTH": str(len(body))}, strict=True, charset="utf-8",
                                             part_limit=FORM_PARTS)
    for part in files.values():
        part.close()
    return {name: forms.get(name) for name in forms}


def _sendgrid_verdict(value: str) -> str:
    """SendGrid's ``dkim`` field, ``{@example.com : pass}``: the result."""
    found = _SENDGRID_VERDICT.search(value)
    return found.group(1) if found else ""
