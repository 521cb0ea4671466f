"""A minimal Django project for the outbox tests (tests/test_outbox.py): the app's database from
OUTBOX_TRIAL_DB (an SQLite path or a postgresql:// URL), every send_mail() through the outbox."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

SECRET_KEY = "outbox-trial-only"
USE_TZ = True
INSTALLED_APPS = ["producer.django"]
EMAIL_BACKEND = "producer.django.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@beanmail.example"
# OUTBOX_TRIAL_OUTBOX=0: the on-commit hook instead, to measure what the outbox fixes
BEANMAIL = {"OUTBOX": os.environ.get("OUTBOX_TRIAL_OUTBOX", "1") != "0",
            "URL": os.environ.get("BEANMAIL_BEANSTALK_URL"), "STORE": "", "SECRET": os.environ.get("BEANMAIL_SECRET", "")}

_db = os.environ["OUTBOX_TRIAL_DB"]
if _db.startswith("postgresql://"):
    _url = urlsplit(_db)
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": _url.path.lstrip("/"),
                             "USER": _url.username or "", "HOST": _url.hostname or "", "PORT": _url.port or ""}}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _db}}
