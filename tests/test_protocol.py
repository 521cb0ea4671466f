"""The SMTP protocol core (worker/transports/protocol.py) driven by a scripted server: what the
client writes, and what each reply, each refusal and each broken connection becomes. No socket:
the unit tier's view of every rule both real drivers (blocking and event loop) share."""

from __future__ import annotations

from typing import Callable, Sequence

import pytest

from worker.outcomes import Bounced, Deferred, Greylisted, InDoubt
from worker.settings import SmtpTarget
from worker.transports.protocol import Reply, Stale, auth_mechanisms, open_session, parse_reply, pipelined, transaction

from .fakes import LOST, WHERE, Server

PIPELINING = {"PIPELINING", "8BITMIME"}


def send(server: Server, offered: set[str] = PIPELINING, recipients: Sequence[str] = ("a@example.com",),
         before_end: Callable[[], None] | None = None) -> Reply:
    return server.run(transaction(WHERE, offered, "s@example.org", recipients, b"Subject: x\r\n\r\n.dot\r\n",
                                  before_end))


pytestmark = pytest.mark.unit


def test_a_pipelined_message_is_one_envelope_write_its_dot_stuffed_content_and_the_final_reply() -> None:
    server = Server(b"250 ok", b"250 ok", b"354 go", b"250 2.0.0 queued as X")
    assert send(server) == Reply(250, "2.0.0 queued as X")
    assert server.written == [b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
                              b"Subject: x\r\n\r\n..dot\r\n.\r\n"]
    assert server.events[-1] == "read-final 250"


def test_without_pipelining_each_command_waits_for_its_reply_and_no_data_after_every_rcpt_refused() -> None:
    server = Server(b"250 ok", b"550 5.1.1 no such user", b"250 reset")
    with pytest.raises(Bounced) as refused:
        send(server, offered=set())
    assert refused.value.hard and "5.1.1" in refused.value.reason
    assert server.commands == ["MAIL FROM:<s@example.org>", "RCPT TO:<a@example.com>", "RSET"]


@pytest.mark.parametrize("reply, kind, hard", [
    (b"550 5.1.1 user unknown", Bounced, True),
    (b"550 5.7.1 rejected by policy", Bounced, False),
    (b"450 4.2.0 mailbox busy", Deferred, None),
    (b"451 4.7.1 Greylisted, try again in 5 minutes", Greylisted, None),
    (b"550 no such user here", Bounced, True),  # no enhanced code: the address itself
])
def test_a_refused_recipient_becomes_its_outcome(reply: bytes, kind: type, hard: bool | None) -> None:
    server = Server(b"250 ok", reply, b"554 no valid recipients", b"250 reset")
    with pytest.raises(kind) as refused:
        send(server)
    assert type(refused.value) is kind
    if hard is not None:
        assert refused.value.hard is hard  # type: ignore[attr-defined]
    assert server.commands[-1] == "RSET"


def test_a_354_after_every_recipient_was_refused_closes_rather_than_sending_data() -> None:
    server = Server(b"250 ok", b"550 5.1.1 gone", b"354 go ahead anyway")
    with pytest.raises(Deferred, match="without a valid envelope"):
        send(server)
    assert server.events[-1] == "close" and len(server.written) == 1


def test_the_content_refused_after_the_end_of_data_is_reset_and_classified_as_the_message() -> None:
    server = Server(b"250 ok", b"250 ok", b"354 go", b"554 5.7.1 spam", b"250 reset")
    with pytest.raises(Bounced) as refused:
        send(server)
    assert not refused.value.hard and server.commands[-1] == "RSET"


def test_a_connection_lost_before_the_content_is_stale_and_after_it_in_doubt() -> None:
    with pytest.raises(Stale):
        send(Server(b"250 ok", LOST))
    server = Server(b"250 ok", b"250 ok", b"354 go", LOST)
    with pytest.raises(InDoubt, match="may have been delivered"):
        send(server)
    assert server.events[-1] == "close"


def test_a_421_to_mail_is_a_session_the_server_ended_not_a_refusal_of_the_message() -> None:
    with pytest.raises(Stale, match="421"):
        send(Server(b"421 4.3.2 closing", b"503 bad sequence", b"503 bad sequence"))


def test_the_gate_before_the_end_may_stop_the_message_with_nothing_of_it_sent() -> None:
    class Held(Deferred):
        pass

    def gate() -> None:
        raise Held("claim lost")
    server = Server(b"250 ok", b"250 ok", b"354 go")
    with pytest.raises(Held):
        send(server, before_end=gate)
    assert len(server.written) == 1 and server.events[-1] == "close"


def test_a_utf8_local_part_needs_smtputf8_and_is_refused_before_the_envelope_without_it() -> None:
    server = Server()
    with pytest.raises(Bounced, match="SMTPUTF8"):
        send(server, recipients=("zoë@example.com",))
    assert server.written == []
    server = Server(b"250 ok", b"250 ok", b"354 go", b"250 ok")
    send(server, offered=PIPELINING | {"SMTPUTF8"}, recipients=("zoë@example.com",))
    assert server.written[0].startswith("MAIL FROM:<s@example.org> SMTPUTF8\r\n".encode())


def test_a_session_says_ehlo_upgrades_with_starttls_says_ehlo_again_and_authenticates() -> None:
    server = Server(b"220 mx ESMTP", b"250-mx\n250-STARTTLS\n250 PIPELINING", b"220 go ahead",
                    b"250-mx\n250-AUTH PLAIN LOGIN\n250 PIPELINING", b"235 ok")
    target = SmtpTarget("mx.example", 25, "required", "mailer", "s3cret")
    offered = server.run(open_session(target, "client.example", WHERE))
    assert offered == {"AUTH", "PIPELINING"}
    assert server.commands == ["EHLO client.example", "STARTTLS", "EHLO client.example",
                               "AUTH PLAIN AG1haWxlcgBzM2NyZXQ="]
    assert "starttls" in server.events


@pytest.mark.parametrize("script, why", [
    ((b"554 go away",), "greeting refused"),
    ((b"220 mx", b"250 mx"), "does not offer STARTTLS and it is required"),
    ((b"220 mx", b"250-mx\n250 STARTTLS", b"454 TLS not available"), "refused STARTTLS"),
])
def test_each_refused_step_of_a_session_is_named(script: tuple[bytes, ...], why: str) -> None:
    with pytest.raises(Deferred, match=why):
        Server(*script).run(open_session(SmtpTarget("mx.example", 25, "required"), "c", WHERE))


def test_a_server_without_esmtp_gets_helo_and_a_login_only_server_gets_login() -> None:
    server = Server(b"220 old", b"500 what", b"250 hello")
    assert server.run(open_session(SmtpTarget("mx.example", 25, "off"), "c", WHERE)) == set()
    assert server.commands == ["EHLO c", "HELO c"]
    server = Server(b"220 mx", b"250-mx\n250 AUTH LOGIN", b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6", b"235 ok")
    server.run(open_session(SmtpTarget("mx.example", 25, "off", "u", "p"), "c", WHERE))
    assert server.commands[1:] == ["AUTH LOGIN"]  # then the two base64 answers
    assert server.written[-2:] == [b"dQ==\r\n", b"cA==\r\n"]
    assert auth_mechanisms(parse_reply([b"250-mx\r\n", b"250 AUTH=PLAIN\r\n"])) == {"PLAIN"}


def test_a_pipelined_batch_writes_each_content_with_the_next_envelope_and_reports_each_message() -> None:
    items = [("s@example.org", ["a@example.com"], b"one\r\n"), ("s@example.org", ["b@example.com"], b"two\r\n"),
             ("s@example.org", ["c@example.com"], b"three\r\n")]
    server = Server(b"250 ok", b"250 ok", b"354 go", b"250 first",
                    b"250 ok", b"550 5.1.1 gone", b"554 no valid recipients", b"250 reset",
                    b"250 ok", b"250 ok", b"354 go", b"250 third")
    outcomes: dict[int, object] = {}
    rest = server.run(pipelined(WHERE, PIPELINING, items, outcomes.__setitem__))
    assert rest == 3
    assert outcomes[0] == Reply(250, "first") and outcomes[2] == Reply(250, "third")
    assert isinstance(outcomes[1], Bounced) and outcomes[1].hard
    assert server.written[1] == b"one\r\n.\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def test_a_batch_broken_mid_way_says_which_message_is_in_doubt_and_where_the_rest_resumes() -> None:
    items = [("s@example.org", ["a@example.com"], b"one\r\n"), ("s@example.org", ["b@example.com"], b"two\r\n")]
    outcomes: dict[int, object] = {}
    rest = Server(b"250 ok", b"250 ok", b"354 go", LOST).run(pipelined(WHERE, PIPELINING, items,
                                                                       outcomes.__setitem__))
    assert rest == 1 and isinstance(outcomes[0], InDoubt)
    outcomes.clear()
    rest = Server(b"250 ok", LOST).run(pipelined(WHERE, PIPELINING, items, outcomes.__setitem__))
    assert rest == 0 and outcomes == {}  # nothing of the first went: all of it goes on a fresh session


@pytest.mark.parametrize("lines, code, text, enhanced", [
    ([b"250 2.0.0 Ok: queued as 4FZ\r\n"], 250, "2.0.0 Ok: queued as 4FZ", "2.0.0"),
    ([b"550-5.1.1 The email account that you tried to reach does not exist.\r\n",
      b"550 5.1.1 Please try double-checking the recipient's address.\r\n"], 550,
     "5.1.1 The email account that you tried to reach does not exist. 5.1.1 Please try double-checking the"
     " recipient's address.", "5.1.1"),
    ([b"451 Greylisted, try again later\r\n"], 451, "Greylisted, try again later", ""),
    ([b"550 4.1.1 mismatched class\r\n"], 550, "4.1.1 mismatched class", ""),  # an enhanced code of another class
    ([b"250 \xff\xfe odd bytes\r\n"], 250, "\ufffd\ufffd odd bytes", ""),
])
def test_a_reply_is_read_from_its_lines_with_its_enhanced_code(lines: list[bytes], code: int, text: str,
                                                               enhanced: str) -> None:
    reply = parse_reply(lines)
    assert (reply.code, reply.text, reply.enhanced) == (code, text, enhanced)


def test_a_line_that_is_no_smtp_reply_is_a_lost_session() -> None:
    from worker.transports.protocol import Lost, NotSmtp

    with pytest.raises(NotSmtp) as lost:
        parse_reply([b"HTTP/1.1 400 Bad Request\r\n"])
    assert isinstance(lost.value, Lost)


@pytest.mark.parametrize("message, sent", [
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),  # a line starting with a dot is doubled
    (b"no final line end", b"no final line end\r\n.\r\n"),  # the end always on a line of its own
    (b".\r\n", b"..\r\n.\r\n"),  # a lone dot is content, not the end
])
def test_content_is_dot_stuffed_and_ends_on_a_line_of_its_own(message: bytes, sent: bytes) -> None:
    from worker.transports.protocol import content

    assert content(message) == sent


@pytest.mark.parametrize("line, mechanisms", [
    (b"250 AUTH PLAIN LOGIN CRAM-MD5\r\n", {"PLAIN", "LOGIN", "CRAM-MD5"}),
    (b"250 AUTH=LOGIN\r\n", {"LOGIN"}),  # the old form some servers still write
    (b"250 SIZE 1000\r\n", set()),
])
def test_the_auth_mechanisms_a_server_offers(line: bytes, mechanisms: set[str]) -> None:
    assert auth_mechanisms(parse_reply([b"250-mx.example\r\n", line])) == mechanisms


def test_ehlo_keywords_are_read_case_blind_from_every_line_but_the_greeting() -> None:
    from worker.transports.protocol import extensions

    ehlo = parse_reply([b"250-mx.example greets you\r\n", b"250-pipelining\r\n", b"250-SIZE 35882577\r\n",
                        b"250 smtputf8\r\n"])
    assert extensions(ehlo) == {"PIPELINING", "SIZE", "SMTPUTF8"}


@pytest.mark.parametrize("reply, recipient, kind, hard", [
    (b"550 5.1.1 <a@example.com>: Recipient address rejected: User unknown", True, Bounced, True),
    (b"550 5.1.10 RESOLVER.ADR.RecipientNotFound", True, Bounced, True),
    (b"550 No such user here", True, Bounced, True),  # no enhanced code: the address itself
    (b"550 5.7.1 Client host rejected: blocked using zen.spamhaus.org", True, Bounced, False),
    (b"552 5.2.2 Mailbox full", True, Bounced, False),
    (b"554 5.7.1 Message rejected as spam", False, Bounced, False),  # the message, not the address
    (b"550 5.1.1 user unknown", False, Bounced, False),  # said of the message (after the end of data)
    (b"450 4.2.0 mailbox busy", True, Deferred, None),
    (b"451 4.7.1 Greylisted, please try again in 300 seconds", True, Greylisted, None),
    (b"450 Graylisting in action, please come back later", True, Greylisted, None),
    (b"421 4.7.0 Too many connections", False, Deferred, None),
    (b"354 odd", False, Deferred, None),  # no class of failure: deferred, never bounced
])
def test_what_each_refusal_means(reply: bytes, recipient: bool, kind: type, hard: bool | None) -> None:
    from worker.transports.protocol import classify

    outcome = classify(parse_reply([reply + b"\r\n"]), "refused", recipient=recipient)
    assert type(outcome) is kind
    if hard is not None:
        assert outcome.hard is hard  # type: ignore[attr-defined]
    assert reply.decode().split(" ", 1)[1] in outcome.reason


@pytest.mark.parametrize("mail, rcpts, data, verdict", [
    (b"250 ok", [b"250 ok"], b"354 go", None),  # the content may follow
    (b"250 ok", [b"550 5.1.1 gone", b"250 ok"], b"354 go", None),  # one of two refused: the other gets it
    (b"550 5.7.1 sender refused", [b"503 not after a refused MAIL"], b"503 no", "MAIL FROM refused"),
    (b"250 ok", [b"550 5.1.1 gone"], b"554 no valid recipients", "recipient refused"),
    (b"250 ok", [b"250 ok"], b"451 4.3.0 try later", "DATA refused"),
    (b"250 ok", [b"550 5.1.1 gone"], b"354 go ahead anyway", "DATA without a valid envelope"),
])
def test_whether_the_content_may_follow_the_envelopes_replies(mail: bytes, rcpts: list[bytes], data: bytes,
                                                              verdict: str | None) -> None:
    from worker.transports.protocol import envelope_refusal

    refusal = envelope_refusal("mx.example", parse_reply([mail + b"\r\n"]),
                               [parse_reply([r + b"\r\n"]) for r in rcpts], parse_reply([data + b"\r\n"]))
    assert (refusal is None) if verdict is None else (verdict in refusal.reason)
