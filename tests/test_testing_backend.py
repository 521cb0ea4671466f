"""producer.testing, the test backend an application's own tests use: captures what would be
queued, never touches beanstalkd, refuses what the real Notifier refuses, renders on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer import EnvelopeError
from producer.envelope import decode
from producer.testing import Outbox, TestNotifier

from .conftest import ROOT


def test_notify_is_captured_and_asserted_by_template_recipient_and_context() -> None:
    notifier = TestNotifier()
    job = notifier.notify("welcome", "Zoë <ZOE@example.com>", {"name": "Zoë"}, priority="urgent", key="welcome:1")
    assert job == 1
    [d] = notifier.outbox.assert_sent(template="welcome", to="zoe@example.com", name="Zoë", priority="urgent")
    assert (d.key, d.tube, d.to) == ("welcome:1", "mail.urgent", ["ZOE@example.com"])
    with pytest.raises(AssertionError, match=r"found 0; captured:\n  welcome to ZOE@example.com key='welcome:1'"):
        notifier.outbox.assert_sent(template="password_reset")
    with pytest.raises(AssertionError):
        notifier.outbox.assert_nothing_sent()
    notifier.outbox.clear()
    notifier.outbox.assert_nothing_sent()


def test_a_mailout_counts_one_delivery_per_recipient_left_after_exclude() -> None:
    notifier = TestNotifier()
    notifier.notify_watchers("comment", ["ana@example.com", "Bo <bo@example.com>", "cy@example.com"],
                             actor="bo@example.com", key="comment:7", context={"issue": {"id": 7}})
    outbox = notifier.outbox
    assert len(outbox) == 2
    outbox.assert_sent(template="comment", key="comment:7", count=2)
    outbox.assert_sent(to="cy@example.com", issue={"id": 7})
    assert outbox.sent(to="bo@example.com") == []


def test_what_the_real_notifier_refuses_is_refused_here_too() -> None:
    notifier = TestNotifier()
    with pytest.raises(ValueError, match="priority"):
        notifier.notify("welcome", "a@example.com", priority="soon")
    with pytest.raises((TypeError, ValueError, EnvelopeError)):
        notifier.notify("welcome", "a@example.com", {"when": object()})  # not JSON: the real one raises too
    assert notifier.outbox.jobs == []


def test_a_captured_notification_renders_through_the_real_templates() -> None:
    notifier = TestNotifier(Outbox())
    notifier.notify("password_reset", "Ana <ana@example.com>", {"reset_url": "https://x.example/r/1"})
    [d] = notifier.outbox.assert_sent(template="password_reset")
    rendered = notifier.outbox.render(d, templates=str(ROOT / "templates"))
    assert rendered.subject == "Reset your password" and rendered.text.startswith("Hello Ana,")
    assert "https://x.example/r/1" in rendered.text


def test_render_finds_the_templates_the_settings_file_names_as_the_workers_do(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A project whose beanmail.toml says ``templates = "mail_templates"`` (what a newcomer's
    trial tripped on: render() read only BEANMAIL_TEMPLATES)."""
    (tmp_path / "mail_templates" / "shipped").mkdir(parents=True)
    (tmp_path / "mail_templates" / "shipped" / "subject.txt").write_text("Order {{ order }} shipped")
    (tmp_path / "mail_templates" / "shipped" / "body.txt").write_text("Hello {{ recipient.name }}")
    (tmp_path / "beanmail.toml").write_text('[beanmail]\ntemplates = "mail_templates"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BEANMAIL_TEMPLATES", raising=False)
    monkeypatch.delenv("BEANMAIL_CONFIG", raising=False)
    notifier = TestNotifier()
    notifier.notify("shipped", "Ana <ana@example.com>", {"order": 42})
    rendered = notifier.outbox.render(notifier.outbox.assert_sent(template="shipped")[0])
    assert (rendered.subject, rendered.text.strip()) == ("Order 42 shipped", "Hello Ana")


def test_raw_messages_are_captured_with_their_parsed_message() -> None:
    notifier = TestNotifier(secret="s3cret")
    notifier.send_raw(b"Subject: Hi there\r\nFrom: a@example.com\r\nTo: b@example.com\r\n\r\nBody\r\n",
                      ["b@example.com"], sender="a@example.com", key="raw:1")
    [d] = notifier.outbox.assert_sent(subject="Hi there", to="b@example.com")
    assert d.message().get_content().strip() == "Body"
    assert decode(d.body, "s3cret").id == "raw:1"  # signed as the real Notifier signs
    with pytest.raises(EnvelopeError):
        decode(d.body, "another")


def test_a_django_projects_own_tests_run_against_the_test_backend_without_beanstalkd(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    shutil.copytree(ROOT / "tests" / "testing_site", site)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8",
           "BEANMAIL_BEANSTALK_URL": "beanstalk://127.0.0.1:1",  # nothing may reach it
           "BEANMAIL_TEMPLATES": str(ROOT / "templates")}
    out = subprocess.run([sys.executable, "manage.py", "test", "shop", "-v", "2",
                          "--settings", "settings"], cwd=site, env=env, capture_output=True, text=True, timeout=120)
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "Ran 4 tests" in report and "OK" in report, report


def test_flask_captures_in_test_mode_and_refuses_a_misspelt_key() -> None:
    from flask import Flask

    from producer.config import ConfigError
    from producer.flask import Beanmail

    app = Flask("shop")
    app.config.update(BEANMAIL_TEST=True, BEANMAIL_URL="beanstalk://127.0.0.1:1")
    beanmail = Beanmail(app)

    @app.post("/signup")
    def signup() -> str:
        beanmail.notify("welcome", "zoe@example.com", {"name": "Zoë"}, key="welcome:1")
        return "ok"

    @app.post("/broken")
    def broken() -> str:
        beanmail.notify("welcome", "bo@example.com", {"name": "Bo"}, key="welcome:2")
        raise RuntimeError("declined")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    assert client.post("/signup").status_code == 200
    assert client.post("/broken").status_code == 500
    beanmail.captured.assert_sent(template="welcome", to="zoe@example.com", count=1)
    assert beanmail.captured.sent(to="bo@example.com") == []  # the failed request queued nothing
    typo = Flask("typo")
    typo.config.update(BEANMAIL_SECERT="x")
    with pytest.raises(ConfigError, match="BEANMAIL_SECERT is not a beanmail setting; did you mean BEANMAIL_SECRET"):
        Beanmail(typo)
