"""Django's own mail tests, run against ``producer.django.EmailBackend``: a real beanstalkd, a real
worker (in process, drained whenever a test reads its mailbox) and Django's own capturing SMTP
server (aiosmtpd with its ``SMTPHandler``, which refuses a MAIL FROM unlike the header From).

The tests are Django's, read from its sdist (``scripts/setup.sh test`` unpacks it into
var/conformance/; BSD-3-Clause), adapted at run time and not copied: a subclass gives
Django's backend-generic tests (``BaseEmailBackendTests``) our backend and a mailbox read after
the queue is drained, and the SMTP backend's envelope tests get our backend in place of
``smtp.EmailBackend``. Which of Django's tests cannot hold for a queued backend, and why, is in
docs/webapps.md ("Django's own mail tests"). Prints ``N of M Django mail tests pass``.
"""

from __future__ import annotations

import importlib.util
import io
import types
import unittest
from pathlib import Path
from typing import Any

import pytest

from worker.settings import Settings

from ..conftest import ROOT, run_burst
from ..servers import free_port
from ..test_addresses import django_configured

# Of SMTPBackendTests: the tests of what goes into the SMTP envelope. The rest of that class
# tests the connection (TLS, SSL, AUTH, timeouts, open/close) that a queued backend does not make.
SMTP_ENVELOPE_TESTS = ("test_send_messages_empty_list", "test_send_messages_zero_sent",
                       "test_avoids_sending_to_invalid_addresses", "test_encodes_idna_in_smtp_commands",
                       "test_does_not_reencode_idna")
# They send to a domain-less address ("django", "to1"), which Django's SMTP backend hands to the
# local MTA; beanmail refuses it at send() instead of burying it later (docs/webapps.md).
FAIL_BY_DESIGN = {"test_recipient_without_domain", "test_lazy_addresses"}


def django_mail_tests() -> types.ModuleType:
    import django

    path = ROOT / "var" / "conformance" / f"django-{django.__version__}" / "tests" / "mail" / "tests.py"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: `scripts/setup.sh test` (or `make setup-test`) fetches "
                             f"Django {django.__version__}'s test suite from its sdist")
    spec = importlib.util.spec_from_file_location("django_mail_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queued_backend_tests(module: types.ModuleType, settings: Settings) -> type[unittest.TestCase]:
    """Django's backend-generic tests and SMTP envelope tests, for our backend."""

    class QueuedBackendTests(module.BaseEmailBackendTests, module.SMTPBackendTestsBase):  # type: ignore[misc,name-defined]
        email_backend = "producer.django.EmailBackend"

        def setUp(self) -> None:
            super().setUp()
            self.drain()
            self.smtp_handler.flush_mailbox()
            self.addCleanup(self.smtp_handler.flush_mailbox)

        def drain(self) -> None:
            """What a running worker would have done by now: every queued job delivered."""
            port = self.smtp_controller.port
            run_burst(settings.replace(smtp_url=f"smtp://127.0.0.1:{port}?starttls=off"))

        def flush_mailbox(self) -> None:
            self.drain()
            self.smtp_handler.flush_mailbox()

        def get_mailbox_content(self) -> list[Any]:
            self.drain()
            return self.smtp_handler.mailbox

        def get_smtp_envelopes(self) -> list[dict[str, Any]]:
            self.drain()
            return self.smtp_handler.smtp_envelopes

    for name in SMTP_ENVELOPE_TESTS:
        setattr(QueuedBackendTests, name, getattr(module.SMTPBackendTests, name))
    return QueuedBackendTests


def test_djangos_own_mail_tests_pass_through_the_queue(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import django
    import producer.django
    from django.conf import settings as dj

    django_configured()
    dj.BEANMAIL = {"URL": settings.beanstalk_url}
    producer.django._notifier = None
    module = django_mail_tests()
    # the SMTP envelope tests build `smtp.EmailBackend()` themselves: they get ours
    module.smtp = types.SimpleNamespace(EmailBackend=producer.django.EmailBackend)
    cls = queued_backend_tests(module, settings.replace(max_attempts=1))
    names = unittest.TestLoader().getTestCaseNames(cls)
    out = io.StringIO()
    try:
        result = unittest.TextTestRunner(stream=out, verbosity=2).run(unittest.TestSuite(cls(n) for n in names))
    finally:
        producer.django._notifier = None
    failed = {_method(test) for test, _ in (*result.failures, *result.errors)}
    with capsys.disabled():
        print(f"\n{len(names) - len(failed)} of {len(names)} Django mail tests pass "
              f"(Django {django.__version__}; failing by design: "
              f"{', '.join(sorted(failed & FAIL_BY_DESIGN)) or 'none'})")
    print(out.getvalue())  # each test's verdict, shown by pytest when this test fails
    assert result.testsRun == len(names) >= 20, out.getvalue()
    assert failed == FAIL_BY_DESIGN, out.getvalue()


def _method(test: unittest.TestCase) -> str:
    case = getattr(test, "test_case", test)  # a failed subTest reports its own object
    return case._testMethodName  # type: ignore[attr-defined]


def test_a_django_message_arrives_as_django_built_it(settings: Settings) -> None:
    """The worker sends what Django's SMTP backend would: the message Django built, every header
    and every part as Django's own capturing server parses them (no header added, none
    rewritten), to the envelope's recipients."""
    import django  # noqa: F401
    import producer.django
    from django.conf import settings as dj
    from django.core.mail import EmailMultiAlternatives

    django_configured()
    dj.BEANMAIL = {"URL": settings.beanstalk_url}
    producer.django._notifier = None
    module = django_mail_tests()
    handler = module.SMTPHandler()
    port = free_port()
    controller = module.Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mail = EmailMultiAlternatives("Rechnung – Nr. 7", "Grüße,\nim Anhang.", "Shop <shop@discussão.example>",
                                      ["Zoë <zoe@example.com>"], cc=["to@xn--10cl1a0b660p.example.com"],
                                      headers={"Message-ID": "<inv-7@shop.example>", "X-Tag": "invoice"})
        mail.attach_alternative("<p>Grüße</p>", "text/html")
        mail.attach("rechnung.txt", "Summe: 12 €", "text/plain")
        built = module.message_from_bytes(mail.message().as_bytes(linesep="\r\n"))  # as Django's SMTP backend sends
        assert mail.send() == 1
        run_burst(settings.replace(smtp_url=f"smtp://127.0.0.1:{port}?starttls=off"))
        [received] = handler.mailbox
    finally:
        controller.stop()
        producer.django._notifier = None
    assert handler.smtp_envelopes[0]["rcpt_tos"] == ["zoe@example.com", "to@xn--10cl1a0b660p.example.com"]
    def headers(message: Any) -> list[tuple[str, str]]:  # Date: when built; the boundary: random each time
        return [(k, v) for k, v in message.items() if k not in ("Date", "Content-Type")]

    assert headers(received) == headers(built) and len(headers(built)) >= 7
    assert [(p.get_content_type(), p.get_content()) for p in received.walk() if not p.is_multipart()] == \
        [(p.get_content_type(), p.get_content()) for p in built.walk() if not p.is_multipart()]
