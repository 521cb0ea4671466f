"""Enqueue after the database commits, never before: a worker that reads an entity before the
commit finds nothing, and a rolled-back request must not send mail about what did not happen.

``AfterCommit`` records calls and replays them on the Notifier once the transaction is durable;
framework glue (``producer.django``, ``producer.flask``) and plain DB-API code decide when.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from .client import Notifier


class AfterCommit:
    """Buffers ``notify``/``mailout``/``notify_watchers``/``send_raw`` calls until ``flush()``."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._pending: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in ("notify", "mailout", "notify_watchers", "send_raw"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self._pending.append((name, args, kwargs))
        return record

    def flush(self) -> list[Any]:
        pending, self._pending = self._pending, []
        return [getattr(self.notifier, name)(*args, **kwargs) for name, args, kwargs in pending]

    def discard(self) -> None:
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


@contextlib.contextmanager
def transaction(connection: Any, notifier: Notifier) -> Iterator[AfterCommit]:
    """For DB-API code (sqlite3, psycopg): commit, then enqueue; on an error roll back and drop.

        with transaction(db, notifier) as mail:
            db.execute("INSERT INTO comments ...")
            mail.notify_watchers("comment", watchers, actor, context, key=f"comment:{id}")
    """
    pending = AfterCommit(notifier)
    try:
        yield pending
    except BaseException:
        connection.rollback()
        pending.discard()
        raise
    connection.commit()
    pending.flush()
