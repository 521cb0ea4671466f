"""The outbox table (producer/outbox.py holds its DDL, shared with `beanmail outbox init`)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from producer import outbox


def _dialect(schema_editor: Any) -> str:
    vendor = schema_editor.connection.vendor
    if vendor not in outbox.DIALECTS:
        raise RuntimeError(f"the beanmail outbox supports {', '.join(outbox.DIALECTS)}, not this database ({vendor})")
    return vendor


def create(apps: Any, schema_editor: Any) -> None:
    for statement in outbox.ddl(_dialect(schema_editor)):
        schema_editor.execute(statement, params=None)


def drop(apps: Any, schema_editor: Any) -> None:
    for statement in outbox.drop_ddl(_dialect(schema_editor)):
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(create, drop)]
