"""`beanmail inbound fetch`: replies read from a mailbox over IMAP (``BEANMAIL_REPLY_MAILBOX``),
for a reply domain whose mail lands in a hosted mailbox instead of an MTA's pipe. The mailbox
loop is the bounce fetcher's (worker/feedback/imap.py): each message is handled like one piped
into `beanmail inbound`, recorded, and only then flagged ``$BeanmailHandled`` (and moved with
``?move=Folder``), so a run that dies midway takes the unflagged rest next time and a message
taken twice is passed on once (the store knows its event id). A message that cannot be read is
recorded as refused with the error, flagged ``$BeanmailFailed`` too, and never fetched again.
"""

from __future__ import annotations

from ..feedback.imap import drain, parse_mailbox
from ..ops import OpsError, open_store
from ..settings import Settings
from .inbound import handle


def fetch(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Counts by outcome (``replied``, ``refused``, ``duplicate``, ``failed``) and ``messages``."""
    if not settings.reply_mailbox:
        raise OpsError("no mailbox configured (BEANMAIL_REPLY_MAILBOX=imaps://user:pass@host/INBOX)")
    box = parse_mailbox(settings.reply_mailbox, "BEANMAIL_REPLY_MAILBOX")
    store = open_store(settings)

    def failed(raw: bytes, reason: str) -> None:
        store.record_inbound(outcome="refused", reason=f"could not be read: {reason}",
                             raw=raw.decode("utf-8", "replace"))
    try:
        return drain(box, lambda raw: [handle(settings, store, raw, source="imap").outcome], what="reply",
                     timeout=timeout, failed=failed)
    finally:
        store.close()
