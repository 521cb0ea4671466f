"""What each provider's events mean (Amazon SES through SNS, SendGrid, Postmark, Mailgun): which
carry a bounce (hard, soft, or a delay), a complaint or an unsubscribe, and which nothing; each
read from the provider's documented payload into ``Event``s, one per recipient it names. The
webhook app (webhooks.py) checks the signatures and hands the events to the intake; the
conformance tier holds these readers against each provider's published samples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class Malformed(ValueError):
    """The body is not the provider's payload: 400 with the reason."""


@dataclass(frozen=True)
class Event:
    kind: str  # bounce | delayed | complaint | unsubscribe | ignored (kept, suppresses nobody)
    address: str
    token: str = ""  # ours, as the provider handed it back
    return_path: str = ""  # SES: the envelope sender, a VERP address
    status: str = ""
    diagnostic: str = ""
    permanent: bool | None = None  # bounce: the provider's verdict; None: judged by the status
    event_id: str = ""  # the provider's id of the event: a replay counts once
    note: str = ""  # what the provider said (unsubscribes, ignored events)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Malformed(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise Malformed("the body is JSON nested too deeply") from None
    except ValueError as exc:
        raise Malformed(f"the body is not JSON: {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} is {_kind(value)}, not a JSON object")
    return value


def _text(obj: dict[str, Any], name: str, *, required: bool = False) -> str:
    """A string (or number) field; absent or null is "" unless required."""
    value = obj.get(name)
    if value is None:
        if required:
            raise Malformed(f"{name!r} is missing")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Malformed(f"{name!r} is {_kind(value)}, not a string")
    return str(value)


def _address(obj: dict[str, Any], name: str) -> str:
    """An email address field: a string with an @ in it."""
    value = obj.get(name)
    if not isinstance(value, str) or "@" not in value:
        raise Malformed(f"{name!r} is {_kind(value) if not isinstance(value, str) else repr(value[:80])},"
                        " not an email address")
    return value.strip()


def _inner(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """An optional object field: absent or null is {}, anything else must be an object."""
    value = obj.get(name)
    return {} if value is None else _object(value, repr(name))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number")


def _recipients(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name)
    value = [] if value is None else value
    if not isinstance(value, list):
        raise Malformed(f"{name!r} is {_kind(value)}, not a list")
    return [_object(r, f"an entry of {name!r}") for r in value]


def _recipients_of(mail: dict[str, Any]) -> list[str]:
    """SES's mail.destination: the message's recipients."""
    value = mail.get("destination")
    value = [] if value is None else value
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise Malformed("'mail.destination' is not a list of addresses")
    return value


def _ses_events(message: dict[str, Any], sns_id: str) -> list[Event]:
    """SES notifications (notificationType) and event publishing (eventType)."""
    kind = _text(message, "notificationType") or _text(message, "eventType")
    mail = _inner(message, "mail")
    source = _text(mail, "source")

    def eid(address: str) -> str:
        return f"{sns_id}:{address.lower()}"
    if kind == "Bounce":
        bounce = _object(message.get("bounce"), "'bounce'")
        permanent = _text(bounce, "bounceType") == "Permanent"  # Transient and Undetermined are soft
        sub = _text(bounce, "bounceSubType")
        return [Event("bounce", _address(r, "emailAddress"), return_path=source,
                      status=_text(r, "status"), diagnostic=_text(r, "diagnosticCode") or sub,
                      permanent=permanent, event_id=eid(_text(r, "emailAddress")))
                for r in _recipients(bounce, "bouncedRecipients")]
    if kind == "Complaint":
        complaint = _object(message.get("complaint"), "'complaint'")
        feedback_type = _text(complaint, "complaintFeedbackType")
        recipients = _recipients(complaint, "complainedRecipients")
        if feedback_type == "not-spam":
            return [Event("ignored", _address(r, "emailAddress"), return_path=source, event_id=eid(_text(r, "emailAddress")),
                          note="complaint feedback type not-spam: no complaint") for r in recipients]
        return [Event("complaint", _address(r, "emailAddress"), return_path=source,
                      event_id=eid(_text(r, "emailAddress"))) for r in recipients]
    if kind == "DeliveryDelay":
        delay = _object(message.get("deliveryDelay"), "'deliveryDelay'")
        return [Event("delayed", _address(r, "emailAddress"), return_path=source,
                      status=_text(r, "status"), diagnostic=_text(r, "diagnosticCode") or _text(delay, "delayType"),
                      event_id=eid(_text(r, "emailAddress"))) for r in _recipients(delay, "delayedRecipients")]
    if kind == "Subscription":  # SES list management: the recipient changed their preferences
        sub = _object(message.get("subscription"), "'subscription'")
        prefs = _inner(sub, "newTopicPreferences")
        destination = _recipients_of(mail)
        address = destination[0] if len(destination) == 1 else ""  # several: the event names none of them
        if prefs.get("unsubscribeAll") is True:
            return [Event("unsubscribe", address, return_path=source, event_id=eid(address),
                          note=f"unsubscribed from every topic of {_text(sub, 'contactList')} (SES)")]
        return [Event("ignored", address, return_path=source, event_id=eid(address),
                      note="SES subscription change that leaves some topic subscribed")]
    return []  # Send, Delivery, Open, Click, Reject, Rendering Failure: no feedback on an address


# SendGrid drops a message without trying it when the address is on one of its lists; the reason
# says which (its Event Webhook reference): these three carry the address's state, others ours
_SENDGRID_DROPS = {"bounced address": "bounce", "unsubscribed address": "unsubscribe",
                   "spam reporting address": "complaint", "invalid": "bounce"}


def _sendgrid_event(e: dict[str, Any]) -> Event | None:
    name = _text(e, "event")
    token = _text(e, "beanmail")
    if name not in ("bounce", "blocked", "dropped", "deferred", "spamreport", "unsubscribe", "group_unsubscribe",
                    "group_resubscribe"):
        return None  # processed, delivered, open, click: no feedback on an address
    address = _address(e, "email")
    reason = _text(e, "reason")
    event_id = ":".join((_text(e, "sg_event_id"), name, address.lower())) if e.get("sg_event_id") else ""
    if name in ("bounce", "blocked"):
        blocked = name == "blocked" or _text(e, "type") == "blocked"  # SendGrid: blocked is temporary, bounce not
        return Event("bounce", address, token, status=_text(e, "status"), diagnostic=reason,
                     permanent=not blocked, event_id=event_id)
    if name == "dropped":
        meaning = _SENDGRID_DROPS.get(reason.strip().lower())
        if meaning == "bounce":
            return Event("bounce", address, token, diagnostic=f"dropped by SendGrid: {reason}", permanent=True,
                         event_id=event_id)
        if meaning == "unsubscribe":
            return Event("unsubscribe", address, token, event_id=event_id,
                         note="dropped by SendGrid: the address unsubscribed")
        if meaning == "complaint":
            return Event("complaint", address, token, event_id=event_id)
        return Event("ignored", address, token, event_id=event_id, note=f"dropped by SendGrid: {reason}"[:300])
    if name == "deferred":
        return Event("delayed", address, token, diagnostic=_text(e, "response") or reason, event_id=event_id)
    if name == "spamreport":
        return Event("complaint", address, token, event_id=event_id)
    if name == "unsubscribe":
        return Event("unsubscribe", address, token, event_id=event_id, note="unsubscribed (SendGrid)")
    if name == "group_unsubscribe":
        return Event("unsubscribe", address, token, event_id=event_id,
                     note=f"unsubscribed from SendGrid group {_text(e, 'asm_group_id')}")
    return Event("ignored", address, token, event_id=event_id,
                 note=f"resubscribed to SendGrid group {_text(e, 'asm_group_id')}: a suppression here stays")


# Postmark's bounce types (its Bounce API reference): which say the address is gone, which that
# delivery failed for now, which that the recipient left or complained; the rest are no bounce
_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError", "Blocked", "InboxFull", "SpamNotification", "Unknown",
                  "DMARCPolicy"}


def _postmark_events(e: dict[str, Any]) -> list[Event]:
    record = _text(e, "RecordType")
    if not record:  # older webhooks send no RecordType: known by their fields
        record = ("SubscriptionChange" if "SuppressSending" in e else
                  "Bounce" if "TypeCode" in e and "Email" in e else "")
    token = _text(_inner(e, "Metadata"), "beanmail")
    event_id = _text(e, "ID")
    if record in ("Bounce", "SpamComplaint"):
        kind = _text(e, "Type")
        address = _address(e, "Email")
        detail = _text(e, "Description") or _text(e, "Details")
        if record == "SpamComplaint" or kind == "SpamComplaint":
            return [Event("complaint", address, token, event_id=event_id)]
        if kind == "Unsubscribe":
            return [Event("unsubscribe", address, token, event_id=event_id, note="unsubscribe request (Postmark)")]
        if kind in _POSTMARK_HARD or kind in _POSTMARK_SOFT:
            return [Event("bounce", address, token, diagnostic=detail or kind, permanent=kind in _POSTMARK_HARD,
                          event_id=event_id)]
        return [Event("ignored", address, token, event_id=event_id, note=f"Postmark {kind or 'bounce'}: no bounce")]
    if record == "SubscriptionChange":  # the only bounce/complaint signal of broadcast streams
        address = _address(e, "Recipient")
        event_id = ":".join(("change", _text(e, "MessageID"), address.lower(), _text(e, "ChangedAt"),
                             str(e.get("SuppressSending"))))
        why = _text(e, "SuppressionReason")
        if e.get("SuppressSending") is not True:
            return [Event("ignored", address, token, event_id=event_id,
                          note=f"reactivated at Postmark ({_text(e, 'Origin')}): a suppression here stays")]
        if why == "HardBounce":
            return [Event("bounce", address, token, diagnostic="Postmark suppressed the address: hard bounce",
                          permanent=True, event_id=event_id)]
        if why == "SpamComplaint":
            return [Event("complaint", address, token, event_id=event_id)]
        return [Event("unsubscribe", address, token, event_id=event_id,
                      note=f"Postmark suppressed the address: {why or 'unsubscribed'} ({_text(e, 'Origin')})")]
    return []  # Delivery, Open, Click


# Mailgun's reasons for a permanent failure (its Events reference): a drop for an address on one of
# its lists says what that list is; "old" is a message retried until it expired
_MAILGUN_DROPS = {"suppress-bounce": "bounce", "suppress-unsubscribe": "unsubscribe",
                  "suppress-complaint": "complaint"}


def _mailgun_events(e: dict[str, Any]) -> list[Event]:
    name = _text(e, "event")
    if name not in ("failed", "complained", "unsubscribed"):
        return []  # accepted, delivered, opened, clicked, stored: no feedback on an address
    token = _text(_inner(e, "user-variables"), "beanmail")
    address = _address(e, "recipient")
    # Mailgun's id is unique within a day: with the event's time it names one event
    event_id = f"{_text(e, 'id')}:{_text(e, 'timestamp')}" if e.get("id") else ""
    if name == "complained":
        return [Event("complaint", address, token, event_id=event_id)]
    if name == "unsubscribed":
        return [Event("unsubscribe", address, token, event_id=event_id, note="unsubscribed (Mailgun)")]
    status = _inner(e, "delivery-status")
    enhanced = _text(status, "enhanced-code")
    diagnostic = _text(status, "message") or _text(status, "description")
    reason = _text(e, "reason")
    if _text(e, "severity") != "permanent" and reason != "old":  # Mailgun tries again: one event per retry
        return [Event("delayed", address, token, status=enhanced, diagnostic=diagnostic or reason, event_id=event_id)]
    meaning = _MAILGUN_DROPS.get(reason)
    if meaning == "unsubscribe":
        return [Event("unsubscribe", address, token, event_id=event_id, note="dropped by Mailgun: unsubscribed")]
    if meaning == "complaint":
        return [Event("complaint", address, token, event_id=event_id)]
    if reason == "old":  # retried until it expired (Mailgun marks that last try temporary or permanent)
        return [Event("bounce", address, token, status=enhanced, diagnostic=diagnostic or "expired after retries",
                      permanent=False, event_id=event_id)]
    permanent: bool | None = True if reason in ("bounce", "suppress-bounce") else None  # else: by the status
    return [Event("bounce", address, token, status=enhanced, diagnostic=diagnostic or f"Mailgun: {reason}",
                  permanent=permanent, event_id=event_id)]
