"""Addresses are judged once (producer/addresses.py), the same for Notifier, Django, the
after-commit hooks, PHP and Ruby jobs and the worker: each row of the outside trial's table
(Django 5.2's mail tests through our backend), and EAI over SMTPUTF8."""

from __future__ import annotations

import json
import subprocess
from typing import Iterator

import pytest

from producer import AddressError, Notifier
from producer.addresses import check_address, parse_mailbox
from producer.client import connect, message_key
from producer.hooks import AfterCommit
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, poison_reasons, run_burst
from .servers import Beanstalkd, SmtpServer

INJECTIONS = ['"evil@example.com\r\nto"@example.com', "to\nevil@example.com"]
REFUSED = ["to@other.com <to@example.com>", *INJECTIONS, "carl@exa mple.com", "tester", "to@other.com@example.com",
           "@", "to@", "@example.com", "a..b@example.com", "a@b_c.example", "zoe@[127.0.0.1]", "x@xn--bad-.example"]
# IDNA 2008 A-labels that IDNA 2003 would decode to other names (UTS #46 deviations), kept as written
IDNA2008 = ["to@xn--10cl1a0b660p.example.com", "cc@xn--nxasmm1c.example.com", "bcc@xn--mgba3gch31f060k.example.com",
            "from@xn--fa-hia.example.com"]


def ready(settings: Settings) -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        return sum(int(c.stats_tube(t)["current-jobs-ready"]) for t in c.tubes())


def django_configured() -> None:
    """The settings tests/test_webapps.py configures, whichever test configures them first."""
    import django
    from django.conf import settings as dj

    if not dj.configured:
        dj.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
                     EMAIL_BACKEND="producer.django.EmailBackend", DEFAULT_FROM_EMAIL="app@beanmail.example",
                     INSTALLED_APPS=[], USE_TZ=True)
        django.setup()


@pytest.fixture
def django_beanstalk(settings: Settings) -> Iterator[None]:
    import producer.django
    from django.conf import settings as dj

    django_configured()
    dj.BEANMAIL = {"URL": settings.beanstalk_url}
    producer.django._notifier = None
    yield
    producer.django._notifier = None


# -- the judgement itself -------------------------------------------------------------------------

@pytest.mark.parametrize("text", REFUSED)
def test_what_is_not_one_valid_address_is_refused_with_a_valueerror_saying_invalid_address(text: str) -> None:
    with pytest.raises(ValueError, match="^Invalid address"):
        parse_mailbox(text)
    with pytest.raises(AddressError):
        check_address(text)


def test_an_address_is_never_read_as_another_one() -> None:
    # the standard library's getaddresses reads these as carl@example.com and as two addresses
    with pytest.raises(AddressError, match=r"only 'carl@exa' could be parsed"):
        parse_mailbox("carl@exa mple.com")
    with pytest.raises(AddressError, match=r"not one recipient address"):
        parse_mailbox("to@other.com <to@example.com>")
    with pytest.raises(AddressError, match="no domain"):
        parse_mailbox("tester")
    assert parse_mailbox("Zoë <zoe@example.com>").address == "zoe@example.com"
    assert parse_mailbox('"Doe, John" <john@example.com>').name == "Doe, John"
    assert parse_mailbox("to@漢字.example.com").address == "to@xn--p8s937b.example.com"
    assert parse_mailbox("faß@faß.example").address == "faß@xn--fa-hia.example"  # IDNA 2008, not fass
    assert parse_mailbox("zoë@example.com").smtputf8 and not parse_mailbox("zoe@example.com").smtputf8
    for address in IDNA2008:
        assert check_address(address) == address  # never re-encoded
    assert check_address('"john doe"@example.com') == '"john doe"@example.com'
    assert check_address('"john"@example.com') == "john@example.com"  # the same mailbox, quotes not needed
    for dressed in ("Zoë <zoe@example.com>", "<zoe@example.com>", "zoe @ example.com", "zoe@example.com (Zoë)"):
        with pytest.raises(AddressError, match="alone is expected"):
            check_address(dressed)  # an envelope's address is RCPT TO's path: no name, brackets or comments


def test_notify_refuses_a_typo_instead_of_sending_to_another_address() -> None:
    notifier = Notifier("beanstalk://127.0.0.1:9")  # never reached: the address is refused first
    for text in ("carl@exa mple.com", "tester", *INJECTIONS):
        with pytest.raises(ValueError, match="Invalid address"):
            notifier.notify("welcome", text, {"name": "Carl"})
        with pytest.raises(ValueError, match="Invalid address"):
            AfterCommit(notifier).notify("welcome", text, {"name": "Carl"})  # at notify(), not after the commit
    with pytest.raises(ValueError, match="Invalid address"):
        notifier.send_raw(b"Subject: x\r\n\r\nx\r\n", ["to@other.com <to@example.com>"])
    with pytest.raises(ValueError, match="Invalid address"):
        AfterCommit(notifier).mailout("digest", ["ok@example.com", "carl@exa mple.com"], key="k")


def test_flask_refuses_a_bad_address_in_the_view_not_after_the_request() -> None:
    from flask import Flask

    from producer.flask import Beanmail

    app = Flask(__name__)
    app.config["BEANMAIL_URL"] = "beanstalk://127.0.0.1:9"  # never reached
    beanmail = Beanmail(app)
    with app.test_request_context():
        with pytest.raises(ValueError, match="Invalid address"):
            beanmail.notify("welcome", "carl@exa mple.com", {"name": "Carl"})
        beanmail.notify("welcome", "Carl <carl@example.com>", {"name": "Carl"})
        assert len(beanmail.pending) == 1


def test_the_fast_paths_judge_as_the_full_parser_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare and ``Name <address>`` forms skip the RFC 5322 parser (ten times faster): on random
    text the result must be the parser's, acceptance and normalization alike."""
    import random
    import re

    from producer import addresses

    def judged(text: str) -> tuple[str, str, bool] | None:
        try:
            return addresses._parse(text)
        except AddressError:
            return None

    rng = random.Random(7)
    chars = "aZ9!#$%&'*+/=?^_`{|}~-. ëÜ漢\u00a0\"(),:;<>@[]\\="
    texts = []
    for _ in range(2000):
        name = "".join(rng.choice(chars) for _ in range(rng.randint(1, 8)))
        local = "".join(rng.choice("abc.+-_ë\"") for _ in range(rng.randint(1, 6)))
        domain = rng.choice(["example.com", "ex-ample.org", "x..y", "a_b.c", "EXAMPLE.COM", "xn--fa-hia.de", "漢字.example"])
        texts += [f"{local}@{domain}", f"{name} <{local}@{domain}>"]
    fast = [judged(t) for t in texts]
    never = re.compile(r"(?!x)x")
    monkeypatch.setattr(addresses, "_PLAIN", never)
    monkeypatch.setattr(addresses, "_NAMED", never)
    assert [judged(t) for t in texts] == fast
    assert sum(f is not None for f in fast) > 500  # many accepted, not only refusals compared


def test_the_worker_judges_its_own_from_and_a_jobs_reply_to_by_the_same_rules() -> None:
    from worker import mime
    from worker.outcomes import Poison
    from worker.settings import SettingsError, load

    with pytest.raises(SettingsError, match="BEANMAIL_FROM: Invalid address 'Beanmail <noreply@exa mple.com>'"):
        load({"BEANMAIL_FROM": "Beanmail <noreply@exa mple.com>"})
    assert mime.sender_address("Beanmail <noreply@漢字.example>").addr_spec == "noreply@xn--p8s937b.example"
    with pytest.raises(Poison, match="Reply-To 'carl@exa mple.com' is not an address"):
        mime._reply_to("carl@exa mple.com")


def test_a_mailout_refuses_a_list_with_a_bad_address_and_queues_an_iterators_good_ones(
        settings: Settings, notifier: Notifier, smtp: SmtpServer) -> None:
    from producer.client import RecipientsRefused

    with pytest.raises(AddressError, match="only 'carl@exa' could be parsed"):
        notifier.mailout("welcome", ["ann@example.com", "carl@exa mple.com"], {"name": "x"}, key="list")
    assert ready(settings) == 0  # nothing queued
    with pytest.raises(RecipientsRefused, match=r"^Invalid address: 1 recipient\(s\) refused") as refused:
        notifier.mailout("welcome", iter(["ann@example.com", "carl@exa mple.com", "bob@example.com"]), {"name": "x"},
                         key="iter")
    assert len(refused.value.ids) == 1 and refused.value.refused[0].text == "carl@exa mple.com"
    from worker.fanout import Fanout
    from worker.loop import Worker

    store = Store(settings.store)
    try:
        assert Worker(settings, Fanout(settings), store, tubes=("mailout",)).run(burst=True) == 0
    finally:
        store.close()
    run_burst(settings)
    assert sorted(m.rcpt_tos[0] for m in smtp.wait_for(2)) == ["ann@example.com", "bob@example.com"]


def test_copies_of_one_message_to_different_recipients_have_different_keys() -> None:
    keys = {message_key("django", "<same@app>", [a]) for a in ("a@example.com", "b@example.com", "c@example.com")}
    assert len(keys) == 3
    assert message_key("django", "<same@app>", ["a@example.com"]) == message_key("django", "<same@app>",
                                                                                ["A@example.com"])
    assert message_key("django", "", ["a@example.com"]) is None


# -- each row of the trial, end to end: Django, beanstalkd, a worker, an SMTP server ---------------

@pytest.mark.parametrize("bad", ["to@other.com <to@example.com>", *INJECTIONS, "tester"])
def test_django_send_refuses_what_djangos_smtp_backend_refuses_and_queues_nothing(
        django_beanstalk: None, settings: Settings, bad: str) -> None:
    from django.core.mail import EmailMessage

    for field in ("to", "cc", "bcc"):
        with pytest.raises(ValueError, match="Invalid address"):
            EmailMessage("Hi", "Body", "app@beanmail.example", **{field: [bad]}).send()
        with pytest.raises(ValueError, match="Invalid address"):  # as Django's: even when failing silently
            EmailMessage("Hi", "Body", "app@beanmail.example", **{field: [bad]}).send(fail_silently=True)
    with pytest.raises(ValueError, match="Invalid address"):
        EmailMessage("Hi", "Body", bad, ["zoe@example.com"]).send()
    assert ready(settings) == 0


def test_per_recipient_copies_sharing_a_message_id_are_three_mails(django_beanstalk: None, settings: Settings,
                                                                  smtp: SmtpServer) -> None:
    from django.core.mail import EmailMessage

    headers = {"Message-ID": "<release-7@app.example>"}
    for to in ("a@example.com", "b@example.com", "c@example.com"):
        assert EmailMessage("Release 7", "Out now", "app@beanmail.example", [to], headers=headers).send() == 1
    # the same copy queued again (a retried request) is still sent once
    assert EmailMessage("Release 7", "Out now", "app@beanmail.example", ["a@example.com"], headers=headers).send() == 1
    run_burst(settings)
    got = sorted(m.rcpt_tos[0] for m in smtp.wait_for(3))
    assert got == ["a@example.com", "b@example.com", "c@example.com"]
    store = Store(settings.store)
    try:
        assert store.outcome_counts() == {"sent": 3}
    finally:
        store.close()


def test_idna2008_addresses_already_encoded_are_sent_as_written(django_beanstalk: None, settings: Settings,
                                                                smtp: SmtpServer) -> None:
    from django.core.mail import EmailMessage

    mail = EmailMessage("Hi", "Body", '"βόλος" <from@xn--fa-hia.example.com>', to=['"faß" <' + IDNA2008[0] + ">"],
                        cc=['"ශ්‍රී" <' + IDNA2008[1] + ">"], bcc=[IDNA2008[2]])
    assert mail.send() == 1
    run_burst(settings)
    [received] = smtp.wait_for(1)
    assert received.mail_from == "from@xn--fa-hia.example.com"
    assert received.rcpt_tos == IDNA2008[:3]
    assert poison_reasons(settings) == {}


def test_a_typo_is_refused_by_python_and_buried_with_the_same_reason_from_php_and_ruby(
        settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer) -> None:
    typo = "carl@exa mple.com"
    with pytest.raises(AddressError) as refused:
        Notifier(settings.beanstalk_url).notify("welcome", typo, {"name": "Carl"})
    jobs = []
    for command in (["php", str(ROOT / "examples/php/enqueue.php")], ["ruby", str(ROOT / "examples/ruby/enqueue.rb")]):
        out = subprocess.run([*command, "127.0.0.1", str(beanstalkd.port), "welcome", typo, "Carl",
                              json.dumps({"name": "Carl"})], capture_output=True, text=True, timeout=30, check=True)
        jobs.append(int(out.stdout.strip()))
    run_burst(settings)
    reasons = poison_reasons(settings)
    for job in jobs:
        assert reasons[job] == f"invalid recipient address {typo!r}: {refused.value.reason}"
    assert smtp.messages == []  # and nothing went to carl@example.com


# -- EAI: a UTF-8 local part goes with SMTPUTF8, or is refused with the reason -------------------

def offering_pipelining(server: SmtpServer) -> SmtpServer:
    """aiosmtpd reads pipelined commands in order but does not say so: make it say PIPELINING
    (RFC 2920) in its EHLO reply, so the session writes MAIL, RCPT and DATA in one go."""
    plain = server.handler.handle_EHLO

    async def handle_EHLO(srv, session, envelope, hostname, responses):  # noqa: ANN001, N802
        responses = await plain(srv, session, envelope, hostname, responses)
        return [responses[0], "250-PIPELINING", *responses[1:]]

    server.handler.handle_EHLO = handle_EHLO  # type: ignore[method-assign]
    return server


# concurrency 1: the blocking session (MAIL, RCPT, DATA one by one, or in one write with
# PIPELINING); 4: the event loop's sessions
@pytest.mark.parametrize("concurrency, pipelining", [(1, False), (1, True), (4, False), (4, True)])
def test_a_utf8_local_part_is_sent_with_smtputf8_where_the_server_offers_it(settings: Settings, notifier: Notifier,
                                                                           concurrency: int, pipelining: bool) -> None:
    smtp = SmtpServer()
    smtp = (offering_pipelining(smtp) if pipelining else smtp).start()
    try:
        assert smtp.controller is not None and smtp.controller.SMTP_kwargs["enable_SMTPUTF8"]  # it offers SMTPUTF8
        notifier.notify("welcome", "Zoë <zoë@例子.example>", {"name": "Zoë"}, key="eai:zoe")
        notifier.notify("welcome", "zoe@example.com", {"name": "Zoe"}, key="ascii:zoe")
        run_burst(settings.replace(concurrency=concurrency, smtp_url=smtp.url))
        received = smtp.wait_for(2)
    finally:
        smtp.stop()
    assert sorted(m.rcpt_tos for m in received) == [["zoe@example.com"], ["zoë@xn--fsqu00a.example"]]
    [eai] = [m for m in received if m.rcpt_tos == ["zoë@xn--fsqu00a.example"]]
    assert "To: =?utf-8?b?Wm/Dqw==?= <zoë@xn--fsqu00a.example>".encode() in eai.data  # RFC 6532


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_utf8_local_part_is_bounced_with_the_reason_where_the_server_does_not_offer_smtputf8(
        settings: Settings, notifier: Notifier, concurrency: int) -> None:
    settings = settings.replace(concurrency=concurrency)
    smtp = SmtpServer(enable_SMTPUTF8=False).start()
    try:
        notifier.notify("welcome", "zoë@example.com", {"name": "Zoë"}, key="eai:plain-server")
        notifier.notify("welcome", "zoe@example.com", {"name": "Zoe"}, key="ascii:plain-server")
        run_burst(settings.replace(smtp_url=smtp.url))
    finally:
        smtp.stop()
    store = Store(settings.store)
    try:
        [row] = store.deliveries(key="eai:plain-server")
        assert row.outcome == "bounced"
        assert "does not offer SMTPUTF8" in row.reason and "zoë@example.com" in row.reason
        assert store.suppressed("zoë@example.com") is None  # the address is fine; this server is not
        assert store.deliveries(key="ascii:plain-server")[0].outcome == "sent"
    finally:
        store.close()
    assert [m.rcpt_tos for m in smtp.messages] == [["zoe@example.com"]]
