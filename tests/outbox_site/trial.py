"""The outside trial's Django process: in a loop, one transaction commits a row of the application
and send_mail()s about it; every fifth transaction rolls back instead. Runs until killed (or
COUNT transactions). Row numbers are RUN * 1,000,000 + i, so runs never collide.

    python tests/outbox_site/trial.py RUN [COUNT]
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.outbox_site.settings")

import django  # noqa: E402

django.setup()

from django.core.mail import send_mail  # noqa: E402
from django.db import connection, transaction  # noqa: E402


class RolledBack(Exception):
    pass


def main(run: int, count: int | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS trial_rows (n BIGINT PRIMARY KEY)")
    for i in itertools.count() if count is None else range(count):
        n = run * 1_000_000 + i
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO trial_rows (n) VALUES (%s)", [n])
                send_mail(f"order {n}", f"row {n} committed", None, [f"buyer{n}@example.com"])
                if i % 5 == 4:
                    raise RolledBack()
        except RolledBack:
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
