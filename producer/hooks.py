"""Enqueue after the database commits, never before: a worker that reads an entity before the
commit finds nothing, and a rolled-back request must not send mail about what did not happen.

``AfterCommit`` records calls and replays them on the Notifier once the transaction is durable;
framework glue (``producer.django``, ``producer.flask``) and plain DB-API code decide when.

Once the transaction has committed, the request has succeeded: an enqueue failure then must not
turn it into an error page, nor cost the other mails of the same transaction. Each call is made
on its own; one that fails is kept in the spool when one is configured, and otherwise logged at
error (logger ``beanmail.producer``) with its key and the reason: that mail is lost, which is
why a spool is the setting for mail that matters (password resets).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

from . import spool
from .client import EnqueueError, Notifier, check_call

log = logging.getLogger("beanmail.producer")

CALLS = ("notify", "mailout", "notify_watchers", "send_raw")


def _key(name: str, kwargs: dict[str, Any]) -> str:
    key = kwargs.get("key")
    return str(key) if key else f"(no key: {name})"


def call_after_commit(notifier: Notifier, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Make one Notifier call after a commit; never raises. Returns its result, or the exception
    that was kept in the spool or logged."""
    try:
        return getattr(notifier, name)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the request has committed: nothing may escape
        key = _key(name, kwargs)
        job = exc.job if isinstance(exc, EnqueueError) else None
        if job is not None and notifier.spool:
            try:
                spool.append(notifier.spool, *job)
            except OSError as spool_exc:
                log.error("mail lost after commit: key=%s reason=%s; the spool %s failed too: %s",
                          key, exc, notifier.spool, spool_exc)
            else:
                log.warning("mail spooled after commit: key=%s reason=%s", key, exc)
            return exc
        log.error("mail lost after commit: key=%s reason=%s", key, exc,
                  exc_info=not isinstance(exc, EnqueueError))
        return exc


class AfterCommit:
    """Buffers ``notify``/``mailout``/``notify_watchers``/``send_raw`` calls until ``flush()``."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._pending: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in CALLS:
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            args, kwargs = check_call(name, args, kwargs)  # a bad address raises now, not after the commit
            self._pending.append((name, args, kwargs))
        return record

    def flush(self) -> list[Any]:
        """Each call on its own; never raises. One result per call: the job id(s), or the
        exception that made it fail (already spooled or logged)."""
        pending, self._pending = self._pending, []
        return [call_after_commit(self.notifier, name, args, kwargs) for name, args, kwargs in pending]

    def discard(self) -> None:
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


@contextlib.contextmanager
def transaction(connection: Any, notifier: Notifier, *, outbox: bool = False) -> Iterator[Any]:
    """For DB-API code (sqlite3, psycopg): commit, then enqueue; on an error roll back and drop.

        with transaction(db, notifier) as mail:
            db.execute("INSERT INTO comments ...")
            mail.notify_watchers("comment", watchers, actor, context, key=f"comment:{id}")

    A failing commit raises (nothing is enqueued); after the commit nothing raises.

    ``outbox=True``: each call is written at once as a row of the outbox table through
    ``connection`` (producer.outbox, with the notifier's secret, ttr and blob store), so it
    commits with the block's rows and nothing is left to do after the commit.
    """
    if outbox:
        from .outbox import OutboxNotifier

        writer = OutboxNotifier(connection, secret=notifier.secret, ttr=notifier.ttr, blobs=notifier.blobs)
        try:
            yield writer
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return
    pending = AfterCommit(notifier)
    try:
        yield pending
    except BaseException:
        connection.rollback()
        pending.discard()
        raise
    connection.commit()
    pending.flush()
