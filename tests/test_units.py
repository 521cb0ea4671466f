"""Small pure pieces: settings, the outcome table, backoff, rendering rules, MIME under a C locale."""

from __future__ import annotations

import random
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from producer.envelope import Recipient
from worker import mime
from worker.job import attempt_number
from worker.outcomes import Backoff, Bounced, Deferred, Poison, Skipped, disposition
from worker.render import Rendered, Renderer
from worker.settings import SettingsError, load


def test_settings_come_from_toml_with_environment_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "beanmail.toml"
    toml.write_text('[beanmail]\nsmtp_url = "smtp://relay.example:2525"\nmax_attempts = 5\nfrom_addr = "a@b.example"\n')
    s = load({"BEANMAIL_CONFIG": str(toml), "BEANMAIL_MAX_ATTEMPTS": "9", "BEANMAIL_TUBES": "mail.urgent"})
    assert s.smtp.host == "relay.example" and s.smtp.port == 2525 and s.smtp.tls == "opportunistic"
    assert s.max_attempts == 9 and s.tubes == ("mail.urgent",) and s.from_addr == "a@b.example"


def test_smtp_url_forms() -> None:
    s = load({"BEANMAIL_SMTP_URL": "smtps://us%40er:p%3Ass@mx.example"})
    assert (s.smtp.tls, s.smtp.port, s.smtp.user, s.smtp.password) == ("ssl", 465, "us@er", "p:ss")
    assert load({"BEANMAIL_SMTP_URL": "smtp://h:587?starttls=required"}).smtp.tls == "required"


@pytest.mark.parametrize("environ, named", [
    ({"BEANMAIL_TRANSPORT": "pigeon"}, "BEANMAIL_TRANSPORT"),
    ({"BEANMAIL_SMTP_URL": "http://x"}, "BEANMAIL_SMTP_URL"),
    ({"BEANMAIL_SMTP_URL": "smtp://h?starttls=maybe"}, "BEANMAIL_SMTP_URL"),
    ({"BEANMAIL_BEANSTALK_URL": "redis://x"}, "BEANMAIL_BEANSTALK_URL"),
    ({"BEANMAIL_MAX_ATTEMPTS": "many"}, "BEANMAIL_MAX_ATTEMPTS"),
    ({"BEANMAIL_FROM": "nobody"}, "BEANMAIL_FROM"),
    ({"BEANMAIL_TTR": "10", "BEANMAIL_SMTP_TIMEOUT": "30"}, "BEANMAIL_TTR"),
    ({"BEANMAIL_CONFIG": "/nonexistent.toml"}, "BEANMAIL_CONFIG"),
])
def test_a_bad_setting_fails_naming_it(environ: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load(environ)


def test_the_outcome_table() -> None:
    b = Backoff(base=10, cap=100, max_attempts=3)
    assert disposition(None, 1, b).action == "delete"
    assert (disposition(Skipped("dup"), 1, b).action, disposition(Skipped("dup"), 1, b).outcome) == ("delete", "skipped")
    assert (disposition(Bounced("550"), 1, b).action, disposition(Bounced("550"), 1, b).outcome) == ("delete", "bounced")
    d = disposition(Deferred("451"), 1, b)
    assert (d.action, d.outcome) == ("release", "deferred") and 5 <= d.delay <= 10
    assert disposition(Deferred("451"), 3, b).outcome == "exhausted"
    assert disposition(Deferred("rate", delay=2), 9, b).delay == 2  # an explicit delay is no failure
    assert (disposition(Poison("bad"), 1, b).action, disposition(Poison("bad"), 1, b).outcome) == ("bury", "poison")
    bug = disposition(ZeroDivisionError("division by zero"), 1, b)
    assert bug.action == "bury" and "ZeroDivisionError" in bug.reason


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    b = Backoff(base=30, cap=3600, max_attempts=10)
    rng = random.Random(1)
    for attempt in range(1, 12):
        d = min(3600, 30 * 2 ** (attempt - 1))
        delays = {b.delay(attempt, rng) for _ in range(50)}
        assert all(d / 2 - 1 <= x <= d for x in delays)
        assert len(delays) > 1  # jittered: a crowd of failed jobs does not come back at once


def test_attempts_count_from_beanstalkd_stats() -> None:
    stats = {"releases": 2, "timeouts": 1, "buries": 0}
    assert attempt_number(stats, 8) == 4
    assert attempt_number({"releases": 7, "timeouts": 0, "buries": 1}, 8) == 1  # kicked from buried


@pytest.fixture
def templates(tmp_path: Path) -> Renderer:
    def put(name: str, part: str, text: str) -> None:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / part).write_text(text)
    put("t", "subject.txt", "Hi {{ who }}\n")
    put("t", "body.txt", "{{ who }} & {{ missing | default('x') }}\n")
    put("t", "body.html", "<p>{{ who }}</p>")
    put("evil", "subject.txt", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    put("evil", "body.txt", "x")
    put("broken", "subject.txt", "{% if %}")
    put("broken", "body.txt", "x")
    return Renderer(str(tmp_path))


def test_render_escapes_html_only_and_missing_variables_are_poison(templates: Renderer) -> None:
    r = templates.render("t", {"who": "<b>"})
    assert (r.subject, r.text, r.html) == ("Hi <b>", "<b> & x\n", "<p>&lt;b&gt;</p>")
    with pytest.raises(Poison, match="'who' is undefined"):
        templates.render("t", {})


def test_render_sandbox_and_syntax_errors_are_poison(templates: Renderer) -> None:
    with pytest.raises(Poison, match="sandbox|unsafe"):
        templates.render("evil", {})
    with pytest.raises(Poison, match="syntax error"):
        templates.render("broken", {})


def test_mime_round_trips_through_the_email_parser(templates: Renderer) -> None:
    r = templates.render("t", {"who": "Ünïcødé 名前 " + "long " * 40})
    raw = mime.build(r, mime.sender_address("Bäcker <b@x.example>"), Recipient("z@x.example", "Zoë, Q."),
                     {"Reply-To": "r@x.example"}, message_id="<1@x.example>", now=0)
    raw.decode("ascii")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == r.subject
    assert msg["From"].addresses[0].display_name == "Bäcker"
    assert msg["To"].addresses[0].display_name == "Zoë, Q."
    assert msg["Date"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    # canonical MIME text has CRLF line ends whatever the transfer encoding
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == r.text
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == r.html


NAMES = ["", "Zoë", "Zoë, Q.", 'Bob "the builder" O\'Neil', "Ann", "日本語の名前がとても長い場合でも大丈夫です" * 2, "a.b;c:d", "😀 Emoji"]
SUBJECTS = ["Hi", "Grüße aus Köln – “quoted” — ok", "名前 " * 30, "x" * 200, "long " * 40, "a  b\tc", "=?utf-8?q?not_a_word?="]
BODIES = ["plain ascii\n", "", "no final newline", "line\r\nwith crlf\rand cr\n", "é" * 2000, "ascii " * 300 + "\n",
          "mostly ascii with one é and = signs and trailing space \n.leading dot\nFrom here\n", "日本語\n" * 50,
          "tab\tseparated\t\n", "x" * 1200 + "\n"]


def quoted(name: str, address: str) -> str:
    """How a person writes an address with any display name in a setting or a job header."""
    if not name:
        return address
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'


@pytest.mark.parametrize("i", range(len(BODIES)))
def test_every_generated_form_parses_back_to_what_was_rendered(i: int) -> None:
    name, subject = NAMES[i % len(NAMES)], SUBJECTS[i % len(SUBJECTS)]
    text = BODIES[i]
    html = None if i % 3 == 0 else "<p>" + BODIES[-1 - i] + "</p>"
    r = Rendered(subject, text, html)
    headers = {"Reply-To": quoted(name, "reply@x.example"),
               "List-Unsubscribe": "<https://x.example/u?token=" + "t" * 150 + ">, <mailto:u@x.example>",
               "X-Note": "ünïcode note"}
    raw = mime.build(r, mime.sender_address(quoted(name, "from@x.example")), Recipient("to@x.example", name), headers)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    msg = message_from_bytes(raw, policy=policy.default)
    assert not msg.defects and all(not p.defects for p in msg.walk())
    assert msg["Subject"] == " ".join(subject.split()) or msg["Subject"] == subject
    # a name longer than one encoded-word: Python's parser (not the RFC) puts a space between words
    same = (lambda a, b: a.replace(" ", "") == b.replace(" ", "")) if len(name.encode()) > 45 else str.__eq__
    assert same(msg["To"].addresses[0].display_name, name) and msg["To"].addresses[0].addr_spec == "to@x.example"
    assert same(msg["From"].addresses[0].display_name, name)
    assert same(msg["Reply-To"].addresses[0].display_name, name)
    assert str(msg["List-Unsubscribe"]) == headers["List-Unsubscribe"]
    assert msg["X-Note"] == "ünïcode note"
    want_text = text.replace("\r\n", "\n").replace("\r", "\n")
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == want_text
    if html is None:
        assert msg.get_content_type() == "text/plain"
    else:
        assert msg.get_content_type() == "multipart/alternative"
        assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == html


def test_greylisting_is_retried_after_its_own_delay_and_still_counts_as_an_attempt() -> None:
    from worker.outcomes import Action, Backoff, Disposition, Fate, Greylisted, disposition
    from worker.transports.smtp import Reply, _classify

    backoff = Backoff(base=30, cap=3600, max_attempts=3, greylist_delay=90)
    for reply in (Reply(451, "4.7.1 greylisted, try again later"), Reply(450, "4.2.0 Recipient address rejected: Greylisted"),
                  Reply(451, "4.7.1 Graylisting in action, please come back later")):
        outcome = _classify(reply, "recipient refused", recipient=True)
        assert isinstance(outcome, Greylisted), reply
        assert disposition(outcome, 1, backoff) == Disposition(Action.RELEASE, Fate.DEFERRED, outcome.reason, 90)
        assert disposition(outcome, 3, backoff).outcome is Fate.EXHAUSTED  # a host that greylists for ever
    other = _classify(Reply(451, "4.3.0 mailbox temporarily unavailable"), "recipient refused", recipient=True)
    assert not isinstance(other, Greylisted) and disposition(other, 1, backoff).delay <= 30
