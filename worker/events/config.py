"""The events and replies settings read as the modules use them, and checked at start (a bad
value stops the program naming the setting, as every other setting does)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from .model import TYPES

if TYPE_CHECKING:
    from ..settings import Settings


def enabled(settings: "Settings") -> bool:
    """Events are queued only where something delivers them: with BEANMAIL_EVENTS_URL set."""
    return bool(settings.events_url)


def wanted_types(settings: "Settings") -> frozenset[str]:
    """The event types BEANMAIL_EVENTS_TYPES lets through (all when unset)."""
    names = [t.strip() for t in settings.events_types.split(",") if t.strip()]
    return frozenset(names) if names else frozenset(TYPES)


def event_secrets(settings: "Settings") -> list[str]:
    """Each ``whsec_`` secret; every one signs (the receiver's one verifies during a rotation)."""
    return [k.strip() for k in settings.events_secret.split(",") if k.strip()]


def reply_secret(settings: "Settings") -> str:
    return settings.reply_secret or settings.secret


def validate_events(s: "Settings") -> None:
    from ..settings import SettingsError

    if s.events_url and not s.events_url.startswith(("https://", "http://")):
        raise SettingsError(f"BEANMAIL_EVENTS_URL: must be an http(s) URL, got {s.events_url!r}")
    if s.events_url and not s.events_secret:
        raise SettingsError("BEANMAIL_EVENTS_SECRET: needed with BEANMAIL_EVENTS_URL (whsec_ + base64 of 24-64"
                            " random bytes: python -c 'import os,base64;print(\"whsec_\"+base64.b64encode(os.urandom(32)).decode())')")
    for secret in event_secrets(s):
        if not secret.startswith("whsec_"):
            raise SettingsError("BEANMAIL_EVENTS_SECRET: each secret must start with whsec_ (Standard Webhooks)")
        try:
            key = base64.b64decode(secret[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError("BEANMAIL_EVENTS_SECRET: what follows whsec_ must be base64") from None
        if not 24 <= len(key) <= 64:
            raise SettingsError(f"BEANMAIL_EVENTS_SECRET: the key must be 24 to 64 bytes, got {len(key)}")
    unknown = sorted(set(t.strip() for t in s.events_types.split(",") if t.strip()) - set(TYPES))
    if unknown:
        raise SettingsError(f"BEANMAIL_EVENTS_TYPES: unknown type(s) {', '.join(unknown)}; the types are {', '.join(TYPES)}")
    if not s.events_tube or any(c.isspace() for c in s.events_tube) or len(s.events_tube) > 200:
        raise SettingsError(f"BEANMAIL_EVENTS_TUBE: {s.events_tube!r} is not a tube name")
    for name in ("events_max_age", "events_backoff_base", "events_backoff_max", "events_timeout", "reply_ttl"):
        value = getattr(s, name)
        if not 0 < value < float("inf"):
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a positive number, got {value!r}")
    if not 1 <= s.events_connections <= 64:
        raise SettingsError(f"BEANMAIL_EVENTS_CONNECTIONS: 1 to 64, got {s.events_connections!r}")
    if s.reply_domain:
        if "@" in s.reply_domain or "." not in s.reply_domain or any(c.isspace() for c in s.reply_domain):
            raise SettingsError(f"BEANMAIL_REPLY_DOMAIN: a domain such as replies.example.org, got {s.reply_domain!r}")
        if not reply_secret(s):
            raise SettingsError("BEANMAIL_REPLY_SECRET: needed (or BEANMAIL_SECRET) to sign reply addresses")
