"""Django integration.

    # settings.py
    EMAIL_BACKEND = "producer.django.EmailBackend"
    BEANMAIL = {"URL": "beanstalk://127.0.0.1:11300", "SECRET": "", "SPOOL": "", "STORE": "",
                "PRIORITY": "normal", "ON_COMMIT": True, "OUTBOX": False}

Every ``send_mail()`` / ``EmailMessage.send()`` then becomes a ``raw`` job carrying the built
message with its attachments, enqueued when the surrounding transaction commits (at once outside
one). ``notify_on_commit()`` does the same for templated notifications.

After a commit the request has succeeded, so an enqueue failure then never raises into it: the
job goes to the spool (``SPOOL``) or, without one, is logged at error and lost (see
``producer.hooks``). Enqueued at once (outside a transaction, or ``ON_COMMIT: False``), a failure
raises unless ``fail_silently``.

With ``"OUTBOX": True`` (and ``"producer.django"`` in ``INSTALLED_APPS``, ``manage.py migrate``
creating the table) every job is instead written into the ``beanmail_outbox`` table of the same
database, in the same transaction: it commits with your rows or not at all, and ``beanmail outbox
run`` moves it to beanstalkd (docs/outbox.md). ``notifier()`` then returns that outbox writer.

One message's priority: ``with priority("urgent"): form.save(...)`` (Django's password reset
form sends its mail inside), or the header ``X-Beanmail-Priority: urgent``, which is removed
before the message is queued.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

from django.conf import settings as django_settings
from django.core.mail.backends.base import BaseEmailBackend
from django.db import DEFAULT_DB_ALIAS, transaction

from .. import envelope as env
from ..addresses import AddressError, mailbox_address
from ..client import Notifier, check_call, message_key
from ..hooks import call_after_commit

PRIORITY_HEADER = "X-Beanmail-Priority"

_notifier: Notifier | None = None
_outboxes: dict[str, Notifier] = {}
_priority: contextvars.ContextVar[str | None] = contextvars.ContextVar("beanmail_priority", default=None)


def config() -> dict[str, Any]:
    return {"URL": None, "SECRET": None, "SPOOL": None, "STORE": None, "PRIORITY": "normal", "ON_COMMIT": True,
            "OUTBOX": False, **getattr(django_settings, "BEANMAIL", {})}


def notifier(using: str | None = None) -> Notifier:
    """One Notifier per process (it is thread-safe), built from settings.BEANMAIL; with
    ``OUTBOX``, the outbox writer of database ``using`` (default: "default")."""
    global _notifier
    if config()["OUTBOX"]:
        return outbox_notifier(using)
    if _notifier is None:
        c = config()
        _notifier = Notifier(c["URL"], secret=c["SECRET"], spool=c["SPOOL"], blobs=c["STORE"])
    return _notifier


@contextlib.contextmanager
def priority(name: str) -> Iterator[None]:
    """Mail sent inside the block (``send_mail``, ``notify_on_commit``) gets this priority,
    unless a message sets its own header or call its own ``priority=``."""
    if name not in env.PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(env.PRIORITIES)}, got {name!r}")
    token = _priority.set(name)
    try:
        yield
    finally:
        _priority.reset(token)


def outbox_notifier(using: str | None = None) -> Notifier:
    """A Notifier whose jobs are rows of the outbox table of database ``using``, written through
    the current thread's connection, so in its transaction (producer.outbox)."""
    from .outbox import DjangoOutbox

    alias = using or DEFAULT_DB_ALIAS
    if alias not in _outboxes:
        c = config()
        _outboxes[alias] = DjangoOutbox(alias, secret=c["SECRET"], blobs=c["STORE"])
    return _outboxes[alias]


def _in_transaction(using: str | None) -> bool:
    return transaction.get_connection(using).in_atomic_block


def _after_commit(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, using: str | None) -> None:
    """Enqueue when the transaction commits, never raising then; at once, raising, when there is
    no transaction (the caller still can tell its user). With OUTBOX: a row, now, in the transaction."""
    args, kwargs = check_call(name, args, kwargs)  # a bad address raises now, not after the commit
    if config()["OUTBOX"]:
        getattr(outbox_notifier(using), name)(*args, **kwargs)
    elif _in_transaction(using):
        transaction.on_commit(lambda: call_after_commit(notifier(), name, args, kwargs), using=using)
    else:
        getattr(notifier(), name)(*args, **kwargs)


def notify_on_commit(template: str, to: Any, context: dict[str, Any] | None = None, *, using: str | None = None,
                     fail_silently: bool = False, **kwargs: Any) -> None:
    """``Notifier.notify(template, to, context, **kwargs)`` once the current transaction commits;
    nothing if it rolls back. ``kwargs``: entities, priority, delay, not_after, key, headers.
    After the commit a failure never raises (spooled, or logged at error); without a transaction
    the job is put at once and a failure raises unless ``fail_silently``."""
    if "priority" not in kwargs and _priority.get():
        kwargs["priority"] = _priority.get()
    try:
        _after_commit("notify", (template, to, context), kwargs, using=using)
    except Exception:
        if not fail_silently:
            raise


class EmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[Any]) -> int:
        c = config()
        sent = 0
        for message in email_messages:
            try:
                # each entry one address, judged as Django's SMTP backend judges it (ValueError)
                recipients = [mailbox_address(entry) for entry in message.recipients()]
                sender = mailbox_address(message.from_email) if message.from_email else ""
                if not recipients:
                    continue
                built = message.message()
                chosen = built[PRIORITY_HEADER]
                del built[PRIORITY_HEADER]  # for the worker, not for the recipient
                level = str(chosen).strip().lower() if chosen else (_priority.get() or c["PRIORITY"])
                if level not in env.PRIORITIES:
                    raise ValueError(f"{PRIORITY_HEADER} must be one of {', '.join(env.PRIORITIES)}, got {level!r}")
                data = built.as_bytes(linesep="\r\n")
                key = message_key("django", str(built["Message-ID"] or ""), recipients)  # a copy per recipient list
                kwargs = {"sender": sender, "key": key, "priority": level}
                if c["ON_COMMIT"]:
                    _after_commit("send_raw", (data, recipients), kwargs, using=None)
                else:
                    notifier().send_raw(data, recipients, **kwargs)
            except AddressError:
                raise  # as Django's SMTP backend: an invalid address raises even with fail_silently
            except Exception:
                if not self.fail_silently:
                    raise
                continue
            sent += 1
        return sent
