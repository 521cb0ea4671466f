"""A mailout's progress by key, for the console and `beanmail mailout progress`: sent, bounced,
skipped, failed and left, from the delivery log and the mailout's record (the counting itself is
``producer.schedule.Schedule.progress``, which the Django admin's progress page reads too).

    from worker.mailout_progress import mailout_progress
    p = mailout_progress(settings.store, "news:2026-12")   # Progress(sent=..., bounced=..., left=...)
"""

from __future__ import annotations

from producer.schedule import Progress, Schedule

from .store import Store

__all__ = ["Progress", "mailout_progress"]


def mailout_progress(store: Store | str, key: str) -> Progress:
    """``store``: the worker's Store or its location (``settings.store``). Raises
    producer.blobs.BlobError when the store cannot be read."""
    schedule = Schedule(store.location if isinstance(store, Store) else store)
    try:
        return schedule.progress(key)
    finally:
        schedule.close()
