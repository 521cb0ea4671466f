from django.db import transaction
from django.test import TestCase, override_settings

from producer.django import test_outbox

from .signup import sign_up


# Django's test runner sends send_mail() to its locmem backend (django.core.mail.outbox); with
# beanmail's own backend back in place, send_mail() is captured by the test backend too
@override_settings(EMAIL_BACKEND="producer.django.EmailBackend")
class SignUpMail(TestCase):
    def setUp(self) -> None:
        test_outbox().clear()

    def test_a_sign_up_queues_its_welcome_and_receipt_when_it_commits(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            customer = sign_up("zoe@example.com", "Zoë")
        [welcome] = test_outbox().assert_sent(template="welcome", to="zoe@example.com", name="Zoë")
        self.assertEqual(welcome.key, f"welcome:{customer.pk}")
        [receipt] = test_outbox().assert_sent(subject="Your receipt", priority="urgent")
        self.assertIn("Thanks, Zoë.", receipt.message().get_content())
        rendered = test_outbox().render(welcome)  # through BEANMAIL_TEMPLATES, as a worker would
        self.assertTrue(rendered.subject.endswith("Zoë!"))

    def test_nothing_is_queued_before_the_commit(self) -> None:
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            sign_up("bo@example.com", "Bo")
        test_outbox().assert_nothing_sent()
        self.assertEqual(len(callbacks), 2)

    def test_a_rolled_back_sign_up_queues_nothing(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            try:
                with transaction.atomic():
                    sign_up("cy@example.com", "Cy")
                    raise RuntimeError("payment declined")
            except RuntimeError:
                pass
        test_outbox().assert_nothing_sent()

    def test_an_invalid_address_raises_at_once(self) -> None:
        with self.assertRaises(ValueError):
            sign_up("carl@exa mple.com", "Carl")
