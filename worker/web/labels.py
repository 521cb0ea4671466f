"""A job in a few words for the console's lists: its template (a raw message's: ``raw``) and its
subject where the job itself says it: a raw message's ``Subject`` header (Django's and Flask's
mail), or a ``Subject`` among the envelope's headers. A templated message's subject is made
when it is rendered, so its template names it."""

from __future__ import annotations

import base64
import binascii
from email import policy
from email.parser import BytesHeaderParser
from typing import Any

SHOWN = 200  # characters of a subject a list shows
HEAD = 16_384  # bytes of a raw message read for its headers


def subject_of(envelope: dict[str, Any]) -> str:
    headers = envelope.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == "subject" and isinstance(value, str):
                return _short(value)
    message = envelope.get("message")
    if envelope.get("kind") != "raw" or not isinstance(message, str):
        return ""
    try:
        raw = base64.b64decode(message[: HEAD * 4 // 3 + 4], validate=False)
    except (binascii.Error, ValueError):
        return ""
    try:
        parsed = BytesHeaderParser(policy=policy.default).parsebytes(raw[:HEAD])
        return _short(str(parsed.get("Subject", "") or ""))
    except Exception:  # noqa: BLE001 - a header the parser cannot read: no subject shown
        return ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"
