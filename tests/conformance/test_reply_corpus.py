"""The reply text of mail written by real clients, from a corpus nobody here wrote: talon's
standard replies (Mailgun's quotation library, Apache-2.0; ``scripts/setup.sh test`` takes them
from its sdist on PyPI into var/corpora/talon-replies). Each is a reply "Hello" to a quoted
message, sent by AOL, Android (a Russian attribution), Apple Mail, Comcast, Gmail, Hotmail,
iPhone, Outlook, Sparrow, Thunderbird and Yahoo. Talon keeps signatures ("Sent from my iPhone");
``message.replied`` removes them, so "Hello" is what each must give. ``email_reply_parser`` is
measured on the same messages; the figures are printed."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest
from email_reply_parser import EmailReplyParser

from worker.events.inbound import _bodies, reply_text

from ..conftest import ROOT

TALON = ROOT / "var" / "corpora" / "talon-replies"


def test_talons_standard_replies_each_give_only_the_new_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert (TALON / ".complete").exists(), f"{TALON} is missing: `make setup-test` (scripts/setup.sh test) puts it there"
    ours, theirs, wrong = 0, 0, []
    replies = sorted(TALON.glob("*.eml"))
    for path in replies:
        text, _ = _bodies(BytesParser(policy=policy.default).parsebytes(path.read_bytes()))  # type: ignore[arg-type]
        got = reply_text(text)
        ours += got == "Hello"
        theirs += EmailReplyParser.parse_reply(text).strip() == "Hello"
        if got != "Hello":
            wrong.append(f"{path.name}: {got[:200]!r}")
    with capsys.disabled():
        print(f"\ntalon's standard replies: mail-parser-reply (+ beanmail's quote steps) {ours} of {len(replies)},"
              f" email_reply_parser {theirs} of {len(replies)}")
    assert len(replies) >= 12 and not wrong, "\n".join(wrong)
