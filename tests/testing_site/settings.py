from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "producer.django", "shop"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(HERE / "shop.sqlite3")}}
EMAIL_BACKEND = "producer.django.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@beanmail.example"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# the test backend: every job captured in memory, nothing queued (no beanstalkd needed)
BEANMAIL = {"TEST": True}
