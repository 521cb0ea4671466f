"""Each Django entry point with BEANMAIL["OUTBOX"]: prints, as one JSON object, what the outbox
and the app's table hold after each (tests/test_outbox.py reads it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.outbox_site.settings")

import django  # noqa: E402

django.setup()

from django.core.mail import send_mail  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from producer import envelope as env  # noqa: E402
from producer.django import notifier, notify_on_commit, priority  # noqa: E402


def outbox() -> list[list[object]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT job_key, tube FROM beanmail_outbox ORDER BY id")
        return [list(r) for r in cursor.fetchall()]


def app_rows() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM app_rows ORDER BY name")
        return [r[0] for r in cursor.fetchall()]


def add(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO app_rows (name) VALUES (%s)", [name])


class Undo(Exception):
    pass


with connection.cursor() as c:
    c.execute("CREATE TABLE app_rows (name TEXT PRIMARY KEY)")
seen: dict[str, object] = {}
with transaction.atomic():
    add("signup")
    with priority("urgent"):
        notify_on_commit("welcome", "zoe@example.com", {"name": "Zoë"}, key="welcome:zoe")
try:
    with transaction.atomic():
        add("undone")
        notify_on_commit("welcome", "sam@example.com", key="welcome:sam")
        raise Undo()
except Undo:
    pass
notifier().notify("welcome", "ann@example.com", key="welcome:ann")  # autocommit: a row at once
seen["outbox"] = outbox()
seen["body_id"] = None
with connection.cursor() as c:
    c.execute("SELECT body FROM beanmail_outbox WHERE job_key = %s", ["welcome:zoe"])
    seen["body_id"] = env.decode(c.fetchone()[0]).id
with connection.cursor() as c:
    c.execute("DROP TABLE beanmail_outbox")
with transaction.atomic():  # the table is gone: that mail fails, the transaction does not
    add("order")
    seen["sent_silently"] = send_mail("order", "thanks", None, ["ann@example.com"], fail_silently=True)
try:
    send_mail("order", "thanks", None, ["ann@example.com"])
except Exception as exc:  # noqa: BLE001 - the point: it raises, with the database's reason
    seen["raised"] = str(exc)
seen["app_rows"] = app_rows()
print(json.dumps(seen))
