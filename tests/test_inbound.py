"""Replies in by an MTA and by a mailbox (docs/events.md, "Replies in"): a real Postfix routes the
reply domain to the pipe docs/events.md shows, running `beanmail inbound` as nobody; and
`beanmail inbound fetch` reads a real dovecot mailbox over IMAPS and passes each reply on once,
recorded before it is flagged; a refused message is recorded and never fetched again."""

from __future__ import annotations

import imaplib
import json
import re
import shutil
import smtplib
import ssl
import sysconfig
import tempfile
from pathlib import Path

import pytest

from worker.events import replies
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, bare_env, beanmail
from .endpoint import Endpoint
from .relay import Dovecot, PostfixRelay
from .servers import SmtpServer, wait_until
from .test_feedback import pipe_python
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
                   b"\xff\xfe not a message at all \x00\r\n",
                   # headers on which Python's email package raises (IndexError, AttributeError) when read
                   *(reply(to_zoe, "hi", extra=h) for h in ('Cc: "\\x" <\r\n', "Cc: x:y;z@w\r\n", 'Cc: "\r\n'))]
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
        assert json.loads(first.stdout.strip().splitlines()[-1]) == {"messages": 8, "replied": 2, "refused": 6}
        events = sorted(delivered(reply_settings, endpoint), key=lambda e: e["data"]["key"])
        assert [(e["type"], e["data"]["key"]) for e in events] == [("message.replied", "comment:91:cat"),
                                                                   ("message.replied", "comment:91:zoe")]
        cat, zoe = (e["data"] for e in events)
        assert zoe["text"] == "Sounds good, I'll take it. The fix needs a test for the ü case too."
        assert zoe["sender_verified"] is True and zoe["source"] == "imap"
        assert zoe["authentication"] == {"by": "mx.replies.example.org", "dkim": "pass", "dmarc": "pass", "spf": "pass"}
        assert cat["text"].startswith("I reviewed the migration") and cat["authentication"] == {}
        assert zoe["entities"] == {"issue": {"type": "issue", "id": 42}}
        rows = store.inbound(limit=20)
        assert sorted(r["outcome"] for r in rows) == ["refused"] * 6 + ["replied"] * 2
        assert sum("cannot be read" in r["reason"] for r in rows) == 3
        imap.select("INBOX")
        assert imap.uid("SEARCH", None, "ALL")[1][0].split() == []  # every message moved out, refused ones too
        assert beanmail("inbound", "fetch", "--json", env=env).stdout.strip().endswith('{"messages": 0}')
        imap.select("Handled")
        assert len(imap.uid("SEARCH", None, "KEYWORD $BeanmailHandled")[1][0].split()) == 8
        # a run that died after recording a reply, before flagging it: the next run takes it again, passes it on once
        assert imap.append("INBOX", None, None, client_reply("gmail", to_zoe))[0] == "OK"
        again = beanmail("inbound", "fetch", "--json", env=env, timeout=60)
        assert json.loads(again.stdout.strip().splitlines()[-1]) == {"messages": 1, "duplicate": 1}
        assert len(delivered(reply_settings, endpoint)) == len(events)  # nothing more delivered
        imap.logout()
        store.close()
    finally:
        dovecot.stop()


@pytest.mark.server
def test_postfix_pipes_the_reply_domain_into_beanmail_inbound_and_bounces_nothing_back(
        reply_settings: Settings, endpoint: Endpoint, smtp: SmtpServer) -> None:
    home = Path(tempfile.mkdtemp(prefix="beanmail-inbound-"))
    try:
        store_path = home / "store.sqlite3"
        store = Store(str(store_path))
        to_zoe = minted(store, "comment:91:zoe", "zoe.example@gmail.com")
        store.close()
        for path in (home, *home.iterdir()):  # the pipe runs as nobody: the store and its -wal/-shm are its
            shutil.chown(path, "nobody", "nogroup")
        store = Store(str(store_path))
        values = {"store": str(store_path), "beanstalk_url": reply_settings.beanstalk_url, "reply_domain": DOMAIN,
                  "reply_secret": "r3ply", "events_url": endpoint.url, "events_secret": SECRET,
                  "events_spool": str(home / "events.spool"), "reply_authserv_id": "mx.replies.example.org"}
        config = home / "beanmail.toml"
        config.write_text("[beanmail]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        config.chmod(0o644)
        relay = PostfixRelay(f"127.0.0.1:{smtp.port}", routes={DOMAIN: "beanmail:"},
                             pipe_argv=f"{pipe_python()} -m worker.cli --config {config} inbound"
                                       " --recipient ${original_recipient}",
                             pipe_environment={"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}).start()
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
                client.sendmail("zoe.example@gmail.com", [to_zoe], client_reply("gmail", to_zoe))
                client.sendmail("zoe.example@gmail.com", [to_zoe],
                                reply(to_zoe, "I am out of the office until Monday.", sender="zoe.example@gmail.com",
                                      subject="Automatic reply: Re: New comment on #42", message_id="<ooo@gmail.com>"))
            piped = re.compile(r"relay=beanmail,.*status=sent")  # the pipe exited 0: nothing bounces back
            try:
                wait_until(lambda: len(piped.findall(relay.maillog())) == 2, 30, "two replies through the pipe")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{relay.maillog()[-3000:]}") from None
        finally:
            relay.stop()
        assert sorted(r["outcome"] for r in store.inbound()) == ["refused", "replied"]
        [event] = delivered(reply_settings.replace(store=str(store_path)), endpoint)
        data = event["data"]
        assert (data["key"], data["source"], data["sender_verified"]) == ("comment:91:zoe", "pipe", True)
        assert data["text"] == "Sounds good, I'll take it. The fix needs a test for the ü case too."
        assert data["authentication"]["dmarc"] == "pass"
        assert smtp.messages == []  # nothing went back to the sender: no bounce, no auto-reply loop
        store.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_console_serves_the_inbound_webhooks_under_webhooks_inbound(tmp_path: Path) -> None:
    import io

    from worker.feedback.webhooks import with_webhooks

    app = with_webhooks(lambda environ, start: (start("200 OK", []), [b"console"])[1],
                        Settings(store=str(tmp_path / "store.sqlite3"), postmark_webhook_password="p"))

    def call(path: str) -> tuple[str, bytes]:
        status: list[str] = []
        body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": "2",
                             "wsgi.input": io.BytesIO(b"{}")}, lambda s, h: status.append(s)))
        return status[0], body
    assert call("/webhooks/inbound/nowhere") == ("404 Not Found", b'{"error": "POST to /ses, /postmark, /mailgun,'
                                                                   b' /mailgun/mime, /sendgrid"}')
    assert call("/webhooks/inbound/postmark")[0] == "401 Unauthorized"  # the reply app's own check, ahead of the console's
    assert call("/webhooks/nowhere")[0] == "404 Not Found" and call("/issues")[1] == b"console"


def test_a_provider_form_with_hundreds_of_attachment_parts_is_read() -> None:
    """Mailgun and SendGrid post a reply's attachments as file parts of one form: 300 of them
    (multipart's default of 128 parts refused such a reply as malformed, and it was lost)."""
    from worker.events.inbound_webhooks import _form

    b = "XyZ"
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="subject"\r\n\r\nRe: hi\r\n']
    parts += [f'--{b}\r\nContent-Disposition: form-data; name="attachment-{i}"; filename="f{i}.txt"\r\n'
              f"Content-Type: text/plain\r\n\r\nx\r\n" for i in range(300)]
    body = ("".join(parts) + f"--{b}--\r\n").encode()
    assert _form(body, {"REQUEST_METHOD": "POST", "CONTENT_TYPE": f"multipart/form-data; boundary={b}"}) == \
        {"subject": "Re: hi"}
