"""`beanmail bounces fetch`: read the return-path mailbox over IMAP (where the MTA delivers
bounces when no pipe can be configured: a hosted mailbox, a catch-all), hand each message to
the same intake as the pipe, and mark it handled so the next run skips it. ``drain`` is the
mailbox loop itself, which `beanmail inbound fetch` (worker/events/fetch.py) shares.

``BEANMAIL_BOUNCE_MAILBOX=imaps://user:pass@host[:port]/INBOX`` (``imap://`` for STARTTLS;
``?cafile=PATH`` to trust a private CA; ``?move=Folder`` to move handled messages there, each
flagged ``$BeanmailHandled`` first, so a failed move never brings one back). A message the intake
cannot handle is flagged ``$BeanmailFailed`` as well and set aside like the rest: the mailbox
drains. Run it from cron or a supervisord program; one fetcher at a time per mailbox.
"""

from __future__ import annotations

import imaplib
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..logs import get_logger
from ..ops import OpsError, open_store
from ..settings import Settings, SettingsError
from ..store import StoreUnavailable
from .intake import Intake

HANDLED = "$BeanmailHandled"
UNHANDLED = "$BeanmailFailed"  # with HANDLED: an operator can SEARCH KEYWORD $BeanmailFailed and look
BATCH = 200  # messages per run: a flood is drained over several runs, never all in memory


@dataclass(frozen=True)
class Mailbox:
    host: str
    port: int
    tls: str  # ssl | starttls
    user: str
    password: str
    folder: str
    cafile: str = ""
    move: str = ""


def parse_mailbox(url: str, setting: str = "BEANMAIL_BOUNCE_MAILBOX") -> Mailbox:
    parts = urlsplit(url)
    if parts.scheme not in ("imaps", "imap") or not parts.hostname or not parts.username:
        raise SettingsError(f"{setting}: must look like imaps://user:pass@host/INBOX")
    query = parse_qs(parts.query)
    tls = "ssl" if parts.scheme == "imaps" else "starttls"
    return Mailbox(parts.hostname, parts.port or (993 if tls == "ssl" else 143), tls, unquote(parts.username),
                   unquote(parts.password or ""), unquote(parts.path.lstrip("/")) or "INBOX",
                   query.get("cafile", [""])[0], query.get("move", [""])[0])


def _connect(box: Mailbox, timeout: float) -> imaplib.IMAP4:
    context = ssl.create_default_context(cafile=box.cafile or None)
    if box.tls == "ssl":
        imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=context, timeout=timeout)
    else:
        imap = imaplib.IMAP4(box.host, box.port, timeout=timeout)
        imap.starttls(ssl_context=context)  # a password never crosses the network in clear
    imap.login(box.user, box.password)
    return imap


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fetch(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Handle every bounce not handled before; counts by classification. A store outage stops
    the run with the message left unmarked (the next run takes it again)."""
    if not settings.bounce_mailbox:
        raise OpsError("no mailbox configured (BEANMAIL_BOUNCE_MAILBOX=imaps://user:pass@host/INBOX)")
    store = open_store(settings)
    intake = Intake(settings, store)
    try:
        return drain(parse_mailbox(settings.bounce_mailbox),
                     lambda raw: [h.classification for h in intake.handle_message(raw, source="imap")],
                     what="bounce", timeout=timeout)
    finally:
        store.close()


def drain(box: Mailbox, handle: Callable[[bytes], list[str]], *, what: str, timeout: float = 30.0,
          failed: Callable[[bytes, str], None] | None = None) -> dict[str, int]:
    """``handle`` each message of the mailbox not flagged handled (up to BATCH), then flag it
    (and move it): what ``handle`` returns is counted. StoreUnavailable stops the run with the
    message unflagged; any other error flags it failed (``failed`` records why) and sets it aside."""
    counts: dict[str, int] = {"messages": 0}
    try:
        imap = _connect(box, timeout)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise OpsError(f"mailbox {box.host}:{box.port} unusable: {exc}") from None
    try:
        typ, _ = imap.select(_quote(box.folder))
        if typ != "OK":
            raise OpsError(f"no folder {box.folder!r} in the mailbox")
        typ, data = imap.capability()  # after login: servers announce more (MOVE) than before
        can_move = typ == "OK" and b"MOVE" in (data[0] or b"").upper().split()
        if box.move:
            imap.create(_quote(box.move))  # NO when it exists already: fine
        typ, data = imap.uid("SEARCH", None, f"UNKEYWORD {HANDLED}")
        uids = (data[0] or b"").split()[:BATCH]
        for uid in uids:
            typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if typ != "OK" or raw is None:
                continue
            try:
                outcomes = handle(raw)
            except StoreUnavailable:
                get_logger().error(f"store unavailable: {what} left in the mailbox for the next run", uid=uid.decode())
                raise
            except Exception as exc:  # noqa: BLE001 - one message we cannot handle must not stop the mailbox draining
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                get_logger().error(f"{what} could not be handled: flagged and set aside", uid=uid.decode(), error=reason)
                if failed is not None:
                    failed(raw, reason)
                imap.uid("STORE", uid, "+FLAGS.SILENT", f"({UNHANDLED})")
                outcomes = ["failed"]
            for outcome in outcomes:
                counts[outcome] = counts.get(outcome, 0) + 1
            counts["messages"] += 1
            _mark(imap, uid, box, can_move)
        if box.move and uids:
            imap.expunge()
    finally:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return counts


def _mark(imap: imaplib.IMAP4, uid: bytes, box: Mailbox, can_move: bool) -> None:
    imap.uid("STORE", uid, "+FLAGS.SILENT", f"({HANDLED} \\Seen)")  # kept if a move fails
    if box.move:
        if can_move:
            imap.uid("MOVE", uid, _quote(box.move))
            return
        imap.uid("COPY", uid, _quote(box.move))
        imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")

