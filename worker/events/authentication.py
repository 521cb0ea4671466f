"""What the receiving MTA said about a reply's origin: DKIM, DMARC and SPF results read from its
``Authentication-Results`` header (RFC 8601, parsed by the ``authres`` package) or from a
provider's verdicts (SES receipt, SendGrid Inbound Parse), carried in ``message.replied`` as
``authentication``.

Only a header added by our own MTA means anything: anyone can write one into the mail they send.
``BEANMAIL_REPLY_AUTHSERV_ID`` names our MTA's authserv-id(s); unset, the topmost header is
taken (the one the last hop added — right when that hop is ours and strips look-alikes, as
Postfix with OpenDMARC and most providers do)."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Mapping

import authres

METHODS = ("dkim", "dmarc", "spf")
# a method's results, best first: one passing DKIM signature among failing ones is a pass
_RANK = ("pass", "fail", "softfail", "neutral", "policy", "temperror", "permerror", "none")


def from_headers(msg: EmailMessage, trusted: str = "") -> dict[str, str]:
    """``{"by": authserv-id, "dkim": "pass", "dmarc": "pass", "spf": "pass"}`` from the first
    Authentication-Results header whose authserv-id is trusted; ``{}`` when there is none."""
    ids = {t.strip().lower() for t in trusted.split(",") if t.strip()}
    for value in msg.get_all("Authentication-Results", []):
        try:
            header = authres.AuthenticationResultsHeader.parse_value(" ".join(str(value).split()))
        except Exception:  # noqa: BLE001 - authres raises several syntax errors; a damaged header says nothing
            continue
        by = str(header.authserv_id).lower()
        if ids and by not in ids:
            continue
        found: dict[str, list[str]] = {}
        for result in header.results:
            method = str(result.method).lower()
            if method in METHODS:
                found.setdefault(method, []).append(str(result.result).lower())
        return {"by": by, **{m: _best(found[m]) for m in METHODS if m in found}}
    return {}


def _best(results: list[str]) -> str:
    return min(results, key=lambda r: _RANK.index(r) if r in _RANK else len(_RANK))


def from_verdicts(by: str, verdicts: Mapping[str, str]) -> dict[str, str]:
    """A provider's verdicts (``{"dkim": "PASS", ...}``) in the same shape, lower-cased."""
    out = {m: str(verdicts[m]).strip().lower() for m in METHODS if verdicts.get(m)}
    return {"by": by, **out} if out else {}
