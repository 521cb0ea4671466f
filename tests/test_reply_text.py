"""The new text of a reply, as mail clients lay replies out (tests/replies/*.eml: Gmail in
English and German, Outlook desktop, Outlook's "-----Original Message-----", Outlook for iOS,
Apple Mail, iPhone Mail, Thunderbird top- and bottom-posted, in English and German): what
``message.replied`` carries is the text the writer added, without the quote, the attribution
line or the signature. ``email_reply_parser`` (GitHub's port) is measured beside the parser we
use (``mail-parser-reply``) on the same messages: the figures are printed."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from email_reply_parser import EmailReplyParser

from worker.events.authentication import from_headers
from worker.events.inbound import _bodies, reply_text

FIXTURES = sorted((Path(__file__).parent / "replies").glob("*.eml"))
REPLY_TO = "reply+aaaabbbbccccddddeeeeffffgggghhhh@replies.example.org"


def message(path: Path) -> EmailMessage:
    raw = path.read_bytes().replace(b"{reply_to}", REPLY_TO.encode()).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def reads_as(got: str, want: str) -> bool:
    """The writer's text, allowing a bare sign-off line after it ("Cat", "Bob"): that is theirs."""
    if got == want:
        return True
    head, _, tail = got.partition("\n\n")
    return head == want and bool(re.fullmatch(r"[^\W\d]+( [^\W\d]+){0,2}", tail.strip()))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_replys_new_text_is_kept_without_quote_attribution_or_signature(path: Path) -> None:
    msg = message(path)
    text, _ = _bodies(msg)
    got = reply_text(text)
    assert reads_as(got, str(msg["X-Expect-Text"])), got
    assert "commented on issue" not in got and "Sent from my" not in got and "Outlook" not in got


def test_the_parser_we_use_beats_email_reply_parser_on_the_clients_replies(capsys: pytest.CaptureFixture[str]) -> None:
    ours = theirs = 0
    for path in FIXTURES:
        msg = message(path)
        text, _ = _bodies(msg)
        want = str(msg["X-Expect-Text"])
        ours += reads_as(reply_text(text), want)
        theirs += reads_as(EmailReplyParser.parse_reply(text).strip(), want)
    with capsys.disabled():
        print(f"\nreply text: mail-parser-reply (+ bottom-posting) {ours} of {len(FIXTURES)},"
              f" email_reply_parser {theirs} of {len(FIXTURES)}")
    assert len(FIXTURES) >= 10 and ours == len(FIXTURES) and theirs < ours


def test_dkim_and_dmarc_come_from_our_own_mtas_authentication_results_only() -> None:
    gmail = message(Path(__file__).parent / "replies" / "gmail.eml")
    assert from_headers(gmail) == {"by": "mx.replies.example.org", "dkim": "pass", "dmarc": "pass", "spf": "pass"}
    assert from_headers(gmail, "mx.replies.example.org, mx2.replies.example.org")["dmarc"] == "pass"
    assert from_headers(gmail, "mx.other.example") == {}  # someone else's header (or one the sender wrote)
    forged = EmailMessage()
    forged["Authentication-Results"] = "mx.replies.example.org; dkim=fail header.d=example.com; dkim=pass header.d=x.example"
    forged["Authentication-Results"] = "this is not; = a header"
    assert from_headers(forged) == {"by": "mx.replies.example.org", "dkim": "pass"}
    assert from_headers(EmailMessage()) == {}
