import re
from pathlib import Path

from setuptools import find_packages, setup

# the version is written once, in producer/__init__.py (read here without importing the package)
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "producer" / "__init__.py").read_text(),
                    re.M).group(1)

WORKER = [
    "dnspython>=2.4",
    "jinja2>=3.1",
    "structlog>=23.1",
    "supervisor>=4.2",
    "email-validator>=2.1,<3",
    "cryptography>=41",  # DKIM: reads the keys, signs through OpenSSL (worker/dkim.py), writes new keys
    "flufl.bounce>=4.0",  # detectors for bounces that are not RFC 3464 DSNs
    "prometheus_client>=0.17",  # the console's /metrics
    "waitress>=3.0",  # serves the console: no thread held by a half-sent request, bounded connections
    "standardwebhooks>=1.0",  # signs delivery events (worker/events/deliver.py), MIT
    "mail-parser-reply>=1.30",  # the new text of a reply, quote and signature removed (worker/events/inbound.py), MIT
    "authres>=1.2",  # a reply's Authentication-Results header: DKIM/DMARC/SPF (worker/events/authentication.py), Apache-2.0
    "multipart>=1.1",  # Mailgun routes' and SendGrid Inbound Parse's form posts (worker/events/inbound_webhooks.py), MIT
]

setup(
    name="beanmail",
    version=VERSION,
    description="Asynchronous notification mail: beanstalkd jobs, supervisord workers, jinja2, SMTP",
    packages=find_packages(include=["producer", "producer.*", "worker", "worker.*"]),
    package_data={"producer": ["envelope.schema.json", "django/templates/beanmail/admin/*.html"]},
    python_requires=">=3.11",
    # a web app that only enqueues needs greenstalk alone; the worker's parts are an extra
    install_requires=[
        "greenstalk>=2.0,<3",  # worker/beanstalk.py pipelines over its socket and reply parser
        "idna>=3.4",  # producer/addresses.py: IDNA 2008 domains, the same for every producer and the worker
    ],
    extras_require={
        "worker": WORKER,
        "test": [*WORKER, "pytest>=8", "aiosmtpd>=1.4", "jsonschema>=4", "django>=4.2", "flask>=2.3",
                 "pytest-xdist>=3",  # `make test` runs the suite on two processes (most tests wait on servers)
                 "email-reply-parser>=0.5",  # measured beside mail-parser-reply (tests/test_reply_text.py)
                 "dkimpy[ed25519]>=1.1",  # verifies what worker/dkim.py signs (pynacl for Ed25519)
                 "django-mailer>=2.3",  # the bench compares the relay with it (bench/run.py)
                 "selenium>=4.10",  # drives Debian's chromium + chromium-driver (setup.sh installs them)
                 "sqlalchemy>=2"],  # the outbox through a Flask/SQLAlchemy session (tests/test_outbox.py)
        "django": ["django>=4.2"],
        "flask": ["flask>=2.3"],
        "postgresql": ["psycopg[binary]>=3.1"],
        "mysql": ["PyMySQL>=1.1"],  # entity resolvers over MySQL/MariaDB (worker/entities.py)
    },
    entry_points={"console_scripts": ["beanmail = worker.cli:main"]},
)
