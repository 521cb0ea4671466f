"""The sending stage's part of the loop: Feedback-ID, the VERP envelope sender, the DKIM
signature, and holding bulk mail while the brake is on. The pipeline calls it at four points
and stays unaware of the rest."""

from __future__ import annotations

import re

from producer.envelope import Envelope

from ..dkim import MessageFormatError, Signer
from ..logs import get_logger
from ..outcomes import Deferred, Poison
from ..settings import Settings
from ..store import Store
from . import verp
from .brake import Brake

HOLD_DELAY = 300  # a bulk job met while the brake is on comes back this much later (no retry spent)
_UNSAFE = re.compile(r"[^A-Za-z0-9._/@+=-]+")
# where each provider keeps a value of ours and hands it back in its events (their docs: SendGrid
# unique_args in X-SMTPAPI, Postmark X-PM-Metadata-*, Mailgun X-Mailgun-Variables)
PROVIDER_HEADERS = {
    "sendgrid": ("X-SMTPAPI", '{"unique_args": {"beanmail": "TOKEN"}}'),
    "postmark": ("X-PM-Metadata-beanmail", "TOKEN"),
    "mailgun": ("X-Mailgun-Variables", '{"beanmail": "TOKEN"}'),
}


def _field(value: str) -> str:
    return _UNSAFE.sub("-", value)[:64] or "-"


class Outbound:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.signer = Signer.from_settings(settings)  # keys read once, here
        if self.signer is not None:  # what a rotation's operator checks after a restart
            get_logger().info("dkim signing", domain=self.signer.domain,
                              keys=[key.description for key in self.signer.keys])
        self.brake = Brake(settings, store)
        self.sender_id = _field(settings.feedback_id or settings.from_addr.rpartition("@")[2].rstrip(">").strip())

    def headers(self, envelope: Envelope) -> dict[str, str]:
        """Gmail's Feedback-ID, ``template:mailout:priority:sender``: its postmaster tools count
        spam reports per identifier, so a bad template or campaign shows by name."""
        mailout = "-"
        address = envelope.recipient.address.lower()
        if envelope.id.endswith(":" + address):  # fan-out's key: <mailout key>:<address>
            mailout = envelope.id[: -len(address) - 1]
        headers = {"Feedback-ID": ":".join(_field(x) for x in (envelope.template, mailout, envelope.priority,
                                                               self.sender_id))}
        provider = self.settings.relay_provider
        if provider in PROVIDER_HEADERS:  # the token comes back in the provider's webhook events
            # made as prepare() records the message (its recipients joined), so it always names it
            recipients = ",".join(r.address.lower() for r in envelope.to)
            token = verp.make_token(envelope.id, recipients, self.settings.verp_secret)
            name, template = PROVIDER_HEADERS[provider]
            headers[name] = template.replace("TOKEN", token)
        return headers

    def hold(self, envelope: Envelope) -> None:
        if envelope.priority == "bulk":
            reason = self.brake.held()
            if reason:
                raise Deferred(f"brake: {reason}", delay=HOLD_DELAY)

    def prepare(self, envelope: Envelope, message: bytes, sender: str) -> tuple[str, bytes]:
        """The envelope sender and the message as they go out."""
        bulk = envelope.priority == "bulk"
        recipient = ",".join(r.address.lower() for r in envelope.to)
        if (self.settings.return_path and not envelope.sender) or self.settings.relay_provider \
                or (bulk and self.brake.enabled and self.settings.transport == "mx"):
            # one row per message, what a bounce is matched against and the brake counts; through a
            # relay without a return path no bounce ever comes back, so nothing is written
            tid = verp.token_id(envelope.id, recipient)
            self.store.remember_message(tid, envelope.id, recipient, envelope.template, bulk)
            if self.settings.return_path and not envelope.sender:  # a raw job naming its own keeps it
                token = verp.make_token(envelope.id, recipient, self.settings.verp_secret)
                sender = verp.return_path(self.settings.return_path, token)
        if self.signer is not None and (envelope.kind == "mail" or self.signer.covers(message)):
            try:
                message = self.signer.sign(message)
            except MessageFormatError as exc:  # a raw message's header; sent unsigned it would fail DMARC
                raise Poison(f"cannot DKIM-sign the message: {exc}") from None
        return sender, message

    def finished(self, envelope: Envelope, outcome: str) -> None:
        """A bulk message the receiver refused at once counts toward the brake like a DSN."""
        if envelope.priority == "bulk" and outcome == "bounced":
            self.brake.check()
