"""Run by tests/test_django_admin.py against a real beanstalkd (and, with WITH_WORKER=1, real
`beanmail fanout` and `beanmail worker` processes): the editor's button through Django's test client."""

import json
import os
import time

from django.contrib.auth.models import User
from django.test import TestCase

from .models import Issue, Subscriber

CHANGELIST = "/admin/newsroom/issue/"


class SendEmailUpdate(TestCase):
    def setUp(self) -> None:
        User.objects.create_superuser("editor", "editor@example.com", "pw")
        self.client.login(username="editor", password="pw")
        self.issues = [Issue.objects.create(title=t) for t in ("Dark mode", "Faster search", "Unused")]
        for email, name in (("ana@example.com", "Ana"), ("ben@example.com", "Ben"), ("cy@example.com", "Cy")):
            Subscriber.objects.create(email=email, name=name)

    def chosen(self, **extra: str) -> dict:
        return {"action": "send_email_update", "_selected_action": [str(i.pk) for i in self.issues[:2]], **extra}

    def test_confirm_then_one_mailout_and_its_progress(self) -> None:
        page = self.client.post(CHANGELIST, self.chosen())
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, "to <strong>3 recipients</strong>, with the mail template <code>update</code>")
        self.assertContains(page, "<li>Dark mode</li>")
        self.assertNotContains(page, "<li>Unused</li>")

        answered = self.client.post(CHANGELIST, self.chosen(beanmail_confirm="yes"))
        self.assertEqual(answered.status_code, 302)
        progress_url = answered["Location"]
        self.assertTrue(progress_url.startswith(CHANGELIST + "mailout/admin:newsroom.issue:"), progress_url)
        key = progress_url[len(CHANGELIST + "mailout/"):].rstrip("/")
        with open(os.environ["ADMIN_RESULT"], "w") as f:
            json.dump({"key": key}, f)

        if os.environ.get("WITH_WORKER") != "1":
            figures = self.client.get(progress_url, {"format": "json"}).json()
            self.assertEqual((figures["state"], figures["total"], figures["sent"], figures["left"]), ("queued", 3, 0, 3))
            page = self.client.get(progress_url)
            self.assertContains(page, '<td class="left">3</td>')
            self.assertContains(page, '<meta http-equiv="refresh" content="2">')
            return
        deadline = time.monotonic() + 30
        while True:
            figures = self.client.get(progress_url, {"format": "json"}).json()
            if figures["sent"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual((figures["sent"], figures["bounced"], figures["left"]), (3, 0, 0))
        page = self.client.get(progress_url)
        self.assertContains(page, '<td class="sent">3</td>')
        self.assertNotContains(page, 'http-equiv="refresh"')

    def test_cancelled_at_the_confirmation_page_sends_nothing(self) -> None:
        page = self.client.post(CHANGELIST, self.chosen())
        self.assertContains(page, f'href="{CHANGELIST}"')  # "No, take me back"
        self.assertContains(page, 'name="beanmail_confirm" value="yes"')

    def test_an_editor_without_change_permission_gets_no_action(self) -> None:
        from django.contrib.auth.models import Permission

        reader = User.objects.create_user("reader", password="pw", is_staff=True)
        reader.user_permissions.add(Permission.objects.get(codename="view_issue"))
        self.client.login(username="reader", password="pw")
        self.assertNotContains(self.client.get(CHANGELIST), "Send email update")
        page = self.client.post(CHANGELIST, self.chosen(beanmail_confirm="yes"), follow=True)
        self.assertEqual((page.status_code, page.redirect_chain), (200, []))  # the list again, no progress page
        # and nothing queued: tests/test_django_admin.py finds one mailout in beanstalkd for these three tests

    def test_beanstalkd_down_says_not_sent_and_records_nothing(self) -> None:
        import producer.django
        from producer import Notifier
        from producer.schedule import STATES, Schedule

        schedule = Schedule(os.environ["BEANMAIL_STORE"])
        before = schedule.list(STATES)
        working, producer.django._notifier = producer.django._notifier, Notifier("beanstalk://127.0.0.1:9", timeout=1)
        try:
            page = self.client.post(CHANGELIST, self.chosen(beanmail_confirm="yes"), follow=True)
        finally:
            producer.django._notifier.close()
            producer.django._notifier = working
        self.assertEqual(page.redirect_chain, [(CHANGELIST, 302)])  # back to the list, not to a progress page
        self.assertContains(page, "Not sent: no beanstalkd server took the job")
        self.assertEqual(schedule.list(STATES), before)
        schedule.close()
