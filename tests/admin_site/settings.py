"""A minimal Django project with the admin, for the "Send email update" action
(tests/test_django_admin.py): beanstalkd and the store from BEANMAIL_BEANSTALK_URL / BEANMAIL_STORE."""

import os

SECRET_KEY = "admin-site-test-only"
USE_TZ = True
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages", "producer.django", "newsroom"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware", "django.middleware.csrf.CsrfViewMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware"]
ROOT_URLCONF = "urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                 "django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
BEANMAIL = {"URL": os.environ["BEANMAIL_BEANSTALK_URL"], "STORE": os.environ["BEANMAIL_STORE"], "SPOOL": "",
            "SECRET": ""}
