"""The Django app ``producer.django``: in ``INSTALLED_APPS`` so that ``manage.py migrate`` creates
the outbox table (migrations/0001_outbox.py); the backend and hooks work without it."""

from __future__ import annotations

from django.apps import AppConfig


class BeanmailConfig(AppConfig):
    name = "producer.django"
    label = "beanmail"  # "django" would read as Django's own
    verbose_name = "beanmail"

    def ready(self) -> None:
        from . import config

        config()  # settings.BEANMAIL checked at start: a misspelt key or a missing store raises now
