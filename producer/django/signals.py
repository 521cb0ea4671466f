"""Django: beanmail's delivery events as signals (to be moved under ``producer.django`` as
``producer.django.signals``/``.events`` once that module is a package).

    # settings.py
    BEANMAIL = {..., "EVENTS_SECRET": "whsec_..."}   # the worker's BEANMAIL_EVENTS_SECRET

    # urls.py: where BEANMAIL_EVENTS_URL points
    path("beanmail/events", producer.django.signals.events_view)

    # anywhere loaded at start (an AppConfig.ready)
    @receiver(producer.django.signals.message_bounced)
    def on_bounce(sender, event, **kwargs): ...

Each signal's receivers get ``event`` (``producer.events.Event``: ``id``, ``type``,
``timestamp``, ``data``). The view answers 401 to a request whose signature does not verify
(nothing is sent), 200 once every receiver returned, and 500 when one raised, so beanmail
delivers the event again later: a receiver must tolerate an event id it has seen before.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..events import EventVerificationError, verify

message_sent = Signal()
message_bounced = Signal()
message_complained = Signal()
message_unsubscribed = Signal()
message_failed = Signal()
message_replied = Signal()

SIGNALS: dict[str, Signal] = {
    "message.sent": message_sent, "message.bounced": message_bounced, "message.complained": message_complained,
    "message.unsubscribed": message_unsubscribed, "message.failed": message_failed, "message.replied": message_replied,
}


def _secret() -> str:
    secret = getattr(django_settings, "BEANMAIL", {}).get("EVENTS_SECRET", "")
    if not secret:
        raise RuntimeError("settings.BEANMAIL['EVENTS_SECRET'] is not set: events cannot be verified")
    return str(secret)


@csrf_exempt
@require_POST
def events_view(request: HttpRequest) -> HttpResponse:
    try:
        event = verify(request.body, request.headers, _secret())
    except EventVerificationError as exc:
        return JsonResponse({"error": str(exc)}, status=401)
    signal = SIGNALS.get(event.type)
    if signal is not None:  # a type this version does not know: taken, nobody told
        signal.send(sender=events_view, event=event)  # a receiver that raises gives a 500: sent again later
    return JsonResponse({"ok": True, "id": event.id})


__all__ = ["SIGNALS", "events_view", "message_sent", "message_bounced", "message_complained",
           "message_unsubscribed", "message_failed", "message_replied"]
