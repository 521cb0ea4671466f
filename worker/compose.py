"""What a message looks like when it leaves: rendered from its template with the recipient's
context and entities (or a raw job's message, completed), with the headers bulk mail must carry
(Precedence, List-Id, List-Unsubscribe), the application's own, Feedback-ID and Reply-To. The
pipeline's build step (signing comes after, in feedback/outbound.py)."""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import TYPE_CHECKING

from producer.envelope import Envelope
from producer.unsubscribe import list_unsubscribe_headers

from . import mime
from .events.replies import reply_headers
from .outcomes import Poison

if TYPE_CHECKING:
    from email.headerregistry import Address

    from .digest.collect import Digests
    from .entities import Registry
    from .feedback.outbound import Outbound
    from .render import Renderer
    from .settings import Settings
    from .store import Store

_CRLF = re.compile(rb"\r\n|\r|\n")


class Composer:
    def __init__(self, settings: "Settings", store: "Store", sender: "Address", registry: "Registry",
                 renderer: "Renderer", digests: "Digests", outbound: "Outbound") -> None:
        self.settings, self.store, self.sender, self.registry = settings, store, sender, registry
        self.renderer, self.digests, self.outbound = renderer, digests, outbound

    def _list_headers(self, envelope: Envelope) -> dict[str, str]:
        """Bulk mail says what it is (RFC 2076 Precedence, RFC 2919 List-Id) and how to leave."""
        s = self.settings
        list_id = s.list_id or f"<{envelope.template.replace('/', '.')}.{self.sender.domain}>"
        headers = {"Precedence": "bulk", "List-Id": list_id}
        address = envelope.recipient.address
        if s.unsubscribe_url:
            headers.update(list_unsubscribe_headers(address, s.token_secret, url=s.unsubscribe_url,
                                                    mailto=s.unsubscribe_mailto, list_id=list_id,
                                                    ttl=s.unsubscribe_days * 86400))
        elif s.unsubscribe_mailto:
            headers["List-Unsubscribe"] = f"<mailto:{s.unsubscribe_mailto}?subject=unsubscribe>"
        return headers

    def compose(self, envelope: Envelope) -> tuple[bytes, list[str]]:
        """The message and its envelope recipients: rendered from the job's template (its
        entities resolved for the recipient), or a raw job's message completed; Poison when it
        cannot be made."""
        if envelope.kind == "raw":
            try:
                message = base64.b64decode(envelope.message, validate=True)
            except (binascii.Error, ValueError):
                raise Poison("raw job: 'message' is not base64") from None
            # SMTP wants CRLF; messages built with "\n" (Django's as_bytes() default) get it here
            return complete_raw(_CRLF.sub(b"\r\n", message), self.sender.domain), [r.address for r in envelope.to]
        if envelope.kind != "mail":
            raise Poison(f"kind {envelope.kind!r} does not belong on a mail tube")
        context = dict(envelope.context)
        context.update(envelope.recipient.context)
        context.update(self.registry.resolve(envelope.entities, envelope.recipient.address))
        context.setdefault("recipient", {"address": envelope.recipient.address,
                                         "name": envelope.recipient.name})
        rendered = (self.digests.render(self.renderer, envelope, context) if envelope.digest == "compiled"
                    else self.renderer.render(envelope.template, context))
        headers = mime.merge_headers(self._list_headers(envelope) if envelope.priority == "bulk" else {},
                                     self.outbound.headers(envelope),
                                     envelope.headers)  # an application's own headers win
        headers = reply_headers(self.settings, self.store, envelope, headers)  # notify(reply=True): Reply-To
        message = mime.build(rendered, self.sender, envelope.recipient, headers)
        return message, [envelope.recipient.address]


_HEADER_END = re.compile(rb"\r\n\r\n")


def _has_header(head: bytes, name: bytes) -> bool:
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", head) is not None


def complete_raw(message: bytes, domain: str) -> bytes:
    """RFC 5322 requires Date and a receiver expects Message-ID: a raw message without them
    gets them here, as a submission server would add them (RFC 6409 section 8)."""
    m = _HEADER_END.search(message)
    head = message[: m.start()] if m else message
    missing = []
    if not _has_header(head, b"Date"):
        missing.append(f"Date: {mime.date_header(time.time())}\r\n".encode())
    if not _has_header(head, b"Message-ID"):
        missing.append(f"Message-ID: {mime.new_message_id(domain)}\r\n".encode())
    return b"".join(missing) + message if missing else message
