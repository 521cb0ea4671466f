"""Replies that arrive other ways than an MTA's pipe (docs/events.md, "Replies in"):
`beanmail inbound fetch` reads a real dovecot mailbox over IMAPS and passes each reply on once,
recorded before it is flagged; a refused message is recorded and never fetched again."""

from __future__ import annotations

import imaplib
import json
import ssl
from pathlib import Path

import pytest

from worker.events import replies
from worker.settings import Settings
from worker.store import Store

from .conftest import bare_env, beanmail
from .endpoint import Endpoint
from .relay import Dovecot
from .test_replies import DOMAIN, SECRET, delivered, endpoint, reply, reply_settings  # noqa: F401 - fixtures

CLIENTS = Path(__file__).parent / "replies"


def client_reply(name: str, reply_to: str) -> bytes:
    """A reply as a mail client wrote it (tests/replies/NAME.eml), sent to ``reply_to``."""
    raw = (CLIENTS / f"{name}.eml").read_bytes().replace(b"{reply_to}", reply_to.encode())
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def minted(store: Store, key: str, recipient: str) -> str:
    """A reply address of a message beanmail sent (as the pipeline remembers it)."""
    store.remember_reply(replies.token_id(key, recipient), key, recipient, "comment",
                         json.dumps({"issue": {"type": "issue", "id": 42}}))
    return replies.address(replies.make_token(key, recipient, "r3ply", 86400), DOMAIN)


@pytest.mark.server
def test_inbound_fetch_passes_each_reply_on_once_and_sets_refused_mail_aside_for_good(
        reply_settings: Settings, endpoint: Endpoint) -> None:
    dovecot = Dovecot().start()
    try:
        store = Store(reply_settings.store)
        to_zoe = minted(store, "comment:91:zoe", "zoe.example@gmail.com")
        to_cat = minted(store, "comment:91:cat", "cat@icloud.com")
        mailbox = [client_reply("gmail", to_zoe), client_reply("apple-mail", to_cat),
                   reply(to_zoe, "I am away until Monday.", extra="Auto-Submitted: auto-replied\r\n"),
                   reply(to_zoe.replace("reply+", "reply+x"), "hi"),  # a damaged token
                   b"\xff\xfe not a message at all \x00\r\n"]
        imap = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                                 ssl_context=ssl.create_default_context(cafile=str(dovecot.cert)))
        imap.login("replies", dovecot.password)
        for raw in mailbox:
            assert imap.append("INBOX", None, None, raw)[0] == "OK"
        env = bare_env(reply_settings, BEANMAIL_REPLY_DOMAIN=DOMAIN, BEANMAIL_REPLY_SECRET="r3ply",
                       BEANMAIL_EVENTS_URL=endpoint.url, BEANMAIL_EVENTS_SECRET=SECRET,
                       BEANMAIL_EVENTS_SPOOL=reply_settings.events_spool,
                       BEANMAIL_REPLY_AUTHSERV_ID="mx.replies.example.org",
                       BEANMAIL_REPLY_MAILBOX=dovecot.mailbox_url("replies") + "&move=Handled")
        first = beanmail("inbound", "fetch", "--json", env=env, timeout=120)
        assert json.loads(first.stdout.strip().splitlines()[-1]) == {"messages": 5, "replied": 2, "refused": 3}
        events = sorted(delivered(reply_settings, endpoint), key=lambda e: e["data"]["key"])
        assert [(e["type"], e["data"]["key"]) for e in events] == [("message.replied", "comment:91:cat"),
                                                                   ("message.replied", "comment:91:zoe")]
        cat, zoe = (e["data"] for e in events)
        assert zoe["text"] == "Sounds good, I'll take it. The fix needs a test for the ü case too."
        assert zoe["sender_verified"] is True and zoe["source"] == "imap"
        assert zoe["authentication"] == {"by": "mx.replies.example.org", "dkim": "pass", "dmarc": "pass", "spf": "pass"}
        assert cat["text"].startswith("I reviewed the migration") and cat["authentication"] == {}
        assert zoe["entities"] == {"issue": {"type": "issue", "id": 42}}
        rows = store.inbound(limit=10)
        assert sorted(r["outcome"] for r in rows) == ["refused", "refused", "refused", "replied", "replied"]
        imap.select("INBOX")
        assert imap.uid("SEARCH", None, "ALL")[1][0].split() == []  # every message moved out, refused ones too
        assert beanmail("inbound", "fetch", "--json", env=env).stdout.strip().endswith('{"messages": 0}')
        imap.select("Handled")
        assert len(imap.uid("SEARCH", None, "KEYWORD $BeanmailHandled")[1][0].split()) == 5
        # a run that died after recording a reply, before flagging it: the next run takes it again, passes it on once
        assert imap.append("INBOX", None, None, client_reply("gmail", to_zoe))[0] == "OK"
        again = beanmail("inbound", "fetch", "--json", env=env, timeout=60)
        assert json.loads(again.stdout.strip().splitlines()[-1]) == {"messages": 1, "duplicate": 1}
        assert len(delivered(reply_settings, endpoint)) == len(events)  # nothing more delivered
        imap.logout()
        store.close()
    finally:
        dovecot.stop()
