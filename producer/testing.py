"""The test backend: a Notifier that captures what it would queue, in memory, for an
application's own tests. It never touches beanstalkd, encodes every job exactly as the real
Notifier does (so a job the real one would refuse fails here too), and renders a captured job
through the real templates on demand.

    from producer.testing import TestNotifier
    notifier = TestNotifier()
    app_code_under_test(notifier)
    notifier.outbox.assert_sent(template="welcome", to="zoe@example.com")

Django (``BEANMAIL = {"TEST": True}``) and Flask (``BEANMAIL_TEST = True``) put one in place of the
real Notifier; their on-commit hooks run as they do in production, so a rolled-back transaction
captures nothing (use Django's ``captureOnCommitCallbacks(execute=True)`` in a ``TestCase``).
"""

from __future__ import annotations

import base64
import email
import email.policy
import itertools
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Iterator, Mapping

from . import envelope as env
from .client import Notifier
from .envelope import Envelope, Recipient

__all__ = ["Captured", "Outbox", "TestNotifier"]


@dataclass(frozen=True)
class Captured:
    """One job as it would have been queued, and for a mailout chunk one entry per recipient it
    would mail (``recipient`` is then that recipient; for any other job the first of ``to``)."""

    envelope: Envelope
    tube: str
    delay: int
    body: bytes
    job_id: int
    recipient: Recipient | None = None

    @property
    def template(self) -> str:
        return self.envelope.template

    @property
    def key(self) -> str:
        return self.envelope.id

    @property
    def priority(self) -> str:
        return self.envelope.priority

    @property
    def to(self) -> list[str]:
        return [self.recipient.address] if self.recipient else [r.address for r in self.envelope.to]

    @property
    def context(self) -> dict[str, Any]:
        own = self.recipient.context if self.recipient else {}
        return {**self.envelope.context, **own}

    def message(self) -> EmailMessage | None:
        """A raw job's message (Django's ``send_mail``), parsed; None for a templated job."""
        if self.envelope.kind != "raw":
            return None
        raw = base64.b64decode(self.envelope.message)
        return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Outbox:
    """What a TestNotifier captured, oldest first, with assertions that say what was there."""

    jobs: list[Captured] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, job: Captured) -> None:
        with self._lock:
            self.jobs.append(job)

    def clear(self) -> None:
        with self._lock:
            self.jobs.clear()

    def __len__(self) -> int:
        return len(self.deliveries())

    def __iter__(self) -> Iterator[Captured]:
        return iter(self.deliveries())

    def deliveries(self) -> list[Captured]:
        """One entry per message a worker would send: each recipient of a mailout chunk apart."""
        out: list[Captured] = []
        for job in list(self.jobs):
            if job.envelope.kind == "mailout":
                excluded = set(job.envelope.exclude)
                out += [Captured(job.envelope, job.tube, job.delay, job.body, job.job_id, r)
                        for r in job.envelope.to if r.address.lower() not in excluded]
            else:
                out.append(job)
        return out

    def sent(self, *, template: str | None = None, to: str | None = None, key: str | None = None,
             priority: str | None = None, subject: str | None = None, **context: Any) -> list[Captured]:
        """The deliveries matching every criterion given. ``to`` is matched without case;
        ``key`` also matches a mailout recipient's chunk key's prefix (the mailout's key);
        ``subject`` a raw message's Subject; other keywords the job's context values."""
        matches = []
        for d in self.deliveries():
            if template is not None and d.template != template:
                continue
            if to is not None and to.lower() not in (a.lower() for a in d.to):
                continue
            if key is not None and d.key != key and not d.key.startswith(f"{key}#"):
                continue
            if priority is not None and d.priority != priority:
                continue
            if subject is not None:
                message = d.message()
                if message is None or str(message["Subject"]) != subject:
                    continue
            if any(d.context.get(k, _MISSING) != v for k, v in context.items()):
                continue
            matches.append(d)
        return matches

    def assert_sent(self, *, count: int | None = None, **criteria: Any) -> list[Captured]:
        """The matching deliveries; AssertionError listing what was captured if there are none
        (or not exactly ``count``)."""
        found = self.sent(**criteria)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = ", ".join(f"{k}={v!r}" for k, v in criteria.items()) or "anything"
            seen = "\n".join(f"  {d.template or '(raw)'} to {', '.join(d.to)} key={d.key!r} priority={d.priority}"
                             for d in self.deliveries()) or "  (nothing)"
            expected = f"{count} deliveries" if count is not None else "a delivery"
            raise AssertionError(f"expected {expected} matching {wanted}, found {len(found)}; captured:\n{seen}")
        return found

    def assert_nothing_sent(self) -> None:
        if self.jobs:
            self.assert_sent(count=0)

    def render(self, delivery: Captured, templates: str | None = None) -> Any:
        """The delivery's subject, text and HTML through the real templates (``templates``, else
        BEANMAIL_TEMPLATES, else the settings file's ``templates``, else ./templates: as the workers
        find them; needs the worker installed: ``pip install 'beanmail[worker]'``), as a worker
        would render them, entities aside (a test gives their values in the context)."""
        import os

        from worker.render import Renderer

        from .config import read_table

        templates = templates or os.environ.get("BEANMAIL_TEMPLATES") or \
            str(read_table(os.environ, None)[0].get("templates") or "") or "templates"

        context = delivery.context
        recipient = delivery.recipient or delivery.envelope.to[0]
        context.setdefault("recipient", {"address": recipient.address, "name": recipient.name})
        return Renderer(templates).render(delivery.template, context)


_MISSING = object()


class TestNotifier(Notifier):
    """A Notifier whose ``put`` captures into ``outbox`` instead of reaching beanstalkd."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, outbox: Outbox | None = None, *, secret: str | None = "", **kwargs: Any) -> None:
        kwargs.setdefault("blobs", "")
        super().__init__("beanstalk://test.invalid:11300", secret=secret or None, **kwargs)
        self.outbox = outbox if outbox is not None else Outbox()
        self._ids = itertools.count(1)

    def put(self, envelope: Envelope, *, delay: int = 0, tube: str | None = None) -> int:
        tube = tube or env.PRIORITIES[envelope.priority][0]
        body = env.encode(envelope, self.secret)  # what the real put would send, refused alike
        job_id = next(self._ids)
        self.outbox.add(Captured(envelope, tube, delay, body, job_id))
        return job_id

    def put_body(self, tube: str, pri: int, delay: int, ttr: int, body: bytes, *, key: str | None = None) -> int:
        envelope = env.decode(body, self.secret)
        job_id = next(self._ids)
        self.outbox.add(Captured(envelope, tube, delay, body, job_id))
        return job_id

    def put_many(self, jobs: Any, batch: int = 256) -> list[int]:
        return [self.put_body(tube, pri, 0, self.ttr, body) for tube, pri, body in jobs]

    def close(self) -> None:
        pass

