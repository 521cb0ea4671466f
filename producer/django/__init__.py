"""Django integration.

    # settings.py
    EMAIL_BACKEND = "producer.django.EmailBackend"
    BEANMAIL = {"URL": "beanstalk://127.0.0.1:11300", "SECRET": "", "SPOOL": "", "STORE": "",
                "PRIORITY": "normal", "ON_COMMIT": True, "OUTBOX": False, "TEST": False}

Unset keys come from the workers' ``beanmail.toml`` (or ``BEANMAIL_CONFIG``) and ``BEANMAIL_*``
variables (producer.config); a misspelt key or a bad value raises ImproperlyConfigured, at start
with ``"producer.django"`` in ``INSTALLED_APPS``, else at the first send. ``"TEST": True`` (or
``override_settings``) captures every job in memory instead (``test_outbox()``, producer.testing).

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
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from django.conf import settings as django_settings
from django.core.mail.backends.base import BaseEmailBackend
from django.db import DEFAULT_DB_ALIAS, transaction

from .. import envelope as env
from ..addresses import AddressError, mailbox_address
from ..client import Notifier, check_call, message_key
from ..hooks import call_after_commit

if TYPE_CHECKING:
    from ..testing import Outbox

PRIORITY_HEADER = "X-Beanmail-Priority"

_notifier: Notifier | None = None
_test_notifier: Notifier | None = None
_outboxes: dict[str, Notifier] = {}
_priority: contextvars.ContextVar[str | None] = contextvars.ContextVar("beanmail_priority", default=None)


FRAMEWORK_KEYS = {"PRIORITY": "normal", "ON_COMMIT": True, "OUTBOX": False, "TEST": False}
_configs: dict[str, dict[str, Any]] = {}


def config() -> dict[str, Any]:
    """settings.BEANMAIL over the workers' beanmail.toml and BEANMAIL_* variables
    (producer.config), checked once per distinct dict: a misspelt key, a bad value or a store
    that does not exist raises ImproperlyConfigured, naming it."""
    from django.core.exceptions import ImproperlyConfigured

    from ..config import ConfigError, load

    raw = dict(getattr(django_settings, "BEANMAIL", {}) or {})
    seen = repr(sorted(raw.items(), key=lambda kv: str(kv[0])))
    cached = _configs.get(seen)
    if cached is not None:
        return cached
    try:
        loaded = load(raw, label="BEANMAIL", framework_keys=FRAMEWORK_KEYS, check_store=not raw.get("TEST"))
    except ConfigError as exc:
        raise ImproperlyConfigured(f"beanmail: {exc}") from None
    c = {"URL": loaded.url, "SECRET": loaded.secret, "SPOOL": loaded.spool, "STORE": loaded.store,
         "TTR": loaded.ttr, **FRAMEWORK_KEYS, **loaded.extra}
    if c["PRIORITY"] not in env.PRIORITIES:
        raise ImproperlyConfigured(f"beanmail: BEANMAIL['PRIORITY'] must be one of {', '.join(env.PRIORITIES)},"
                                   f" got {c['PRIORITY']!r}")
    _configs[seen] = c
    return c


def notifier(using: str | None = None) -> Notifier:
    """One Notifier per process (it is thread-safe), built from settings.BEANMAIL; with
    ``TEST``, the test backend's (producer.testing: nothing reaches beanstalkd); with ``OUTBOX``,
    the outbox writer of database ``using`` (default: "default")."""
    global _notifier, _test_notifier
    c = config()
    if c["TEST"]:
        if _test_notifier is None:
            from ..testing import TestNotifier

            _test_notifier = TestNotifier(secret=c["SECRET"] or "")
        return _test_notifier
    if c["OUTBOX"]:
        return outbox_notifier(using)
    if _notifier is None:
        _notifier = Notifier(c["URL"], secret=c["SECRET"], ttr=c["TTR"], spool=c["SPOOL"] or "",
                             blobs=c["STORE"] or "")
    return _notifier


def test_outbox() -> "Outbox":
    """What the test backend (``BEANMAIL = {"TEST": True}``) captured: ``.assert_sent(...)``,
    ``.clear()`` (in a TestCase's setUp), ``.render(delivery)``."""
    if not config()["TEST"]:
        raise RuntimeError('test_outbox() needs BEANMAIL = {"TEST": True} (or override_settings in the test)')
    return notifier().outbox  # type: ignore[attr-defined, no-any-return]


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
    if config()["OUTBOX"] and not config()["TEST"]:
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
