"""The outbox writer for Django (``BEANMAIL["OUTBOX"]``): rows through ``connections[alias]``, the
current thread's connection, so in its open transaction. Each row is written in a savepoint: a
failed insert (no table: run ``manage.py migrate``) raises without breaking the caller's
transaction, so ``fail_silently`` costs that mail only."""

from __future__ import annotations

from django.db import connections, transaction

from ..client import DEFAULT_TTR
from ..outbox import OutboxNotifier


class DjangoOutbox(OutboxNotifier):
    def __init__(self, alias: str, *, secret: str | None = None, blobs: str | None = None,
                 ttr: int = DEFAULT_TTR) -> None:
        self.alias = alias
        # Django's cursors take %s on every backend
        super().__init__(lambda: connections[alias], secret=secret, blobs=blobs, ttr=ttr, paramstyle="format")

    def put_body(self, tube: str, pri: int, delay: int, ttr: int, body: bytes, *, key: str | None = None) -> int:
        with transaction.atomic(using=self.alias):  # a savepoint inside a transaction, a transaction outside one
            return super().put_body(tube, pri, delay, ttr, body, key=key)
