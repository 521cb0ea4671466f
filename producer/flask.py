"""Flask integration: ``beanmail.notify(...)`` inside a view is enqueued when the request ends
without an error, that is after the view committed its transaction; an error drops it.

    from producer.flask import Beanmail
    beanmail = Beanmail(app)   # app.config: BEANMAIL_URL, BEANMAIL_SECRET, BEANMAIL_SPOOL, BEANMAIL_STORE

    @app.post("/issues/<int:id>/comments")
    def comment(id):
        db.session.add(Comment(...)); db.session.commit()
        beanmail.notify_watchers("comment", watchers, actor=user.email, key=f"comment:{c.id}", context=...)

With Flask-SQLAlchemy, ``beanmail.attach(db.session)`` flushes on the session's own commit
instead, and drops on its rollback. With ``BEANMAIL_OUTBOX = True`` as well, each call is written
at once into the outbox table through the session's connection, so it commits with the session
(producer.outbox, docs/outbox.md).

Once the request (or the session's commit) has succeeded, an enqueue failure never raises into
it and never costs the other mails: the job goes to the spool, or without one is logged at error
(see ``producer.hooks``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, g

from .client import Notifier
from .hooks import AfterCommit


class Beanmail:
    def __init__(self, app: Flask | None = None) -> None:
        self.notifier: Notifier | None = None
        self.outbox = False
        self._session: Any = None
        self._outbox_writer: Notifier | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Reads ``BEANMAIL_*`` of ``app.config`` over the workers' beanmail.toml and environment
        (producer.config); a misspelt key, a bad value or a missing store raises ConfigError here.
        ``BEANMAIL_TEST = True``: the test backend (producer.testing), ``beanmail.captured``."""
        from .config import load

        given = {k[len("BEANMAIL_"):]: v for k, v in app.config.items() if k.startswith("BEANMAIL_")}
        config = load(given, label="BEANMAIL_", framework_keys={"OUTBOX", "TEST"},
                      check_store=not given.get("TEST"))
        if config.extra.get("TEST"):
            from .testing import TestNotifier

            self.notifier = TestNotifier(secret=config.secret or "")
        else:
            self.notifier = config.notifier()
        self.outbox = bool(config.extra.get("OUTBOX")) and not config.extra.get("TEST")
        app.extensions["beanmail"] = self
        app.teardown_request(self._teardown)

    @property
    def captured(self) -> Any:
        """The test backend's outbox (``BEANMAIL_TEST = True``): ``.assert_sent(...)``, ``.clear()``."""
        outbox = getattr(self.notifier, "outbox", None)
        if outbox is None:
            raise RuntimeError("beanmail.captured needs BEANMAIL_TEST = True")
        return outbox

    @property
    def pending(self) -> AfterCommit:
        if "beanmail_pending" not in g:
            assert self.notifier is not None, "Beanmail.init_app(app) was not called"
            g.beanmail_pending = AfterCommit(self.notifier)
        return g.beanmail_pending

    def __getattr__(self, name: str) -> Any:
        if name in ("notify", "mailout", "notify_watchers", "send_raw"):
            if self.outbox:
                return getattr(self.outbox_writer(), name)
            return getattr(self.pending, name)
        raise AttributeError(name)

    def _teardown(self, exc: BaseException | None) -> None:
        pending = g.pop("beanmail_pending", None)
        if pending is None:
            return
        if exc is None:
            pending.flush()
        else:
            pending.discard()

    def outbox_writer(self) -> Notifier:
        """The outbox writer on the attached session's connection (its current transaction)."""
        if self._outbox_writer is None:
            if self._session is None:
                raise RuntimeError("BEANMAIL_OUTBOX writes through the session: call beanmail.attach(db.session)")
            assert self.notifier is not None, "Beanmail.init_app(app) was not called"
            from .outbox import OutboxNotifier

            session = self._session
            self._outbox_writer = OutboxNotifier(
                lambda: session.connection().connection, paramstyle=session.get_bind().dialect.paramstyle,
                secret=self.notifier.secret, ttr=self.notifier.ttr, blobs=self.notifier.blobs)
        return self._outbox_writer

    def attach(self, session: Any) -> None:
        """Flush on an SQLAlchemy session's commit, drop on its rollback (with BEANMAIL_OUTBOX:
        write each call through the session instead)."""
        self._session = session
        from sqlalchemy import event

        event.listen(session, "after_commit", lambda _s: self.pending.flush() if "beanmail_pending" in g else None)
        event.listen(session, "after_rollback", lambda _s: self.pending.discard() if "beanmail_pending" in g else None)
