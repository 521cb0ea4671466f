"""Django integration.

    # settings.py
    EMAIL_BACKEND = "producer.django.EmailBackend"
    BEANMAIL = {"URL": "beanstalk://127.0.0.1:11300", "SECRET": "", "SPOOL": "",
                "PRIORITY": "normal", "ON_COMMIT": True}

Every ``send_mail()`` / ``EmailMessage.send()`` then becomes a ``raw`` job carrying the built
message with its attachments, enqueued when the surrounding transaction commits (at once outside
one). ``notify_on_commit()`` does the same for templated notifications.
"""

from __future__ import annotations

from email.utils import getaddresses, parseaddr
from typing import Any, Sequence

from django.conf import settings as django_settings
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction

from .client import Notifier

_notifier: Notifier | None = None


def config() -> dict[str, Any]:
    return {"URL": None, "SECRET": None, "SPOOL": None, "PRIORITY": "normal", "ON_COMMIT": True,
            **getattr(django_settings, "BEANMAIL", {})}


def notifier() -> Notifier:
    """One Notifier per process (it is thread-safe), built from settings.BEANMAIL."""
    global _notifier
    if _notifier is None:
        c = config()
        _notifier = Notifier(c["URL"], secret=c["SECRET"], spool=c["SPOOL"])
    return _notifier


def notify_on_commit(template: str, to: Any, context: dict[str, Any] | None = None, *, using: str | None = None,
                     **kwargs: Any) -> None:
    """``Notifier.notify`` once the current transaction commits; nothing if it rolls back."""
    transaction.on_commit(lambda: notifier().notify(template, to, context, **kwargs), using=using)


class EmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[Any]) -> int:
        c = config()
        sent = 0
        for message in email_messages:
            recipients = [address for _, address in getaddresses(message.recipients()) if address]
            if not recipients:
                continue
            built = message.message()
            data = built.as_bytes(linesep="\r\n")
            key = f"django:{built['Message-ID']}" if built["Message-ID"] else None

            def put(data: bytes = data, recipients: list[str] = recipients,
                    sender: str = parseaddr(message.from_email or "")[1], key: str | None = key) -> None:
                notifier().send_raw(data, recipients, sender=sender, key=key, priority=c["PRIORITY"])
            try:
                if c["ON_COMMIT"]:
                    transaction.on_commit(put)
                else:
                    put()
            except Exception:
                if not self.fail_silently:
                    raise
                continue
            sent += 1
        return sent
