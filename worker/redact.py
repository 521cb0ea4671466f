"""Secrets kept out of everything beanmail shows: the passwords inside URLs (``smtp://user:PASSWORD@``,
an IMAP mailbox, a PostgreSQL store), the values of the secret settings, and the secret fields of
a job's context. ``text`` scrubs any text (a log line, an error message, a page); ``shown_setting``
is what `beanmail settings` prints for one setting; ``redact_fields`` hides a job's secret fields.

The settings' secrets are remembered once, when the settings are read (``remember``), as the
settings themselves are: every program reads them once at start."""

from __future__ import annotations

import html
import json
import re
import threading
from typing import Any, Iterable
from urllib.parse import unquote

HIDDEN = "(hidden)"
SET = "(set)"
# a setting holds a secret when its name ends so (secret, web_password, mailgun_signing_key, ...)
SECRET_SETTING_SUFFIXES = ("secret", "password", "key")
# shorter secret values are not searched for in free text: they would match ordinary words (a
# password inside a URL is hidden whatever its length)
MIN_SCRUBBED = 6

# scheme://user:password@host: the password is everything between the first ':' of the
# authority and its last '@' (a raw '@' in a password is common, a raw '/' ends the authority)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s:@'\"<>]*):(?P<password>[^/?#\s'\"<>]*)@")
# password=... in a libpq key/value conninfo, or a query string
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pass|pwd)=)(?P<password>[^\s&;'\"]+)", re.I)

_lock = threading.Lock()
_known: tuple[str, ...] = ()  # secret values to hide, longest first


def hide_url_password(text: str) -> str:
    """``smtp://user:secret@host`` -> ``smtp://user:***@host``, for every URL in ``text``
    (a comma-separated fleet too); ``password=secret`` -> ``password=***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@" if m["password"] else m[0], text)
    if "=" in text:
        text = _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}***", text)
    return text


def url_passwords(text: str) -> list[str]:
    """The passwords inside the URLs of ``text``, as written and percent-decoded."""
    found = []
    for m in _URL_PASSWORD.finditer(text):
        if m["password"]:
            found += [m["password"], unquote(m["password"])]
    return found


def is_secret_setting(name: str) -> bool:
    return name.endswith(SECRET_SETTING_SUFFIXES)


def secrets_of(settings: Any) -> list[str]:
    """Every secret value a ``Settings`` holds: the secret settings (each key of a rotation
    list too) and the passwords inside its URLs."""
    import dataclasses

    values: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if not isinstance(value, str) or not value:
            continue
        if is_secret_setting(f.name) and f.name != "dkim_key":  # dkim_key is the path of the key file
            values += [value, *value.split(",")]
        values += url_passwords(value)
    return values


def remember(values: Iterable[str] | Any) -> None:
    """Hide these secret values (or a ``Settings``' secrets) from every ``text`` from now on."""
    global _known
    if not isinstance(values, (list, tuple, set, frozenset)):
        values = secrets_of(values)
    new = {v.strip() for v in values if isinstance(v, str) and len(v.strip()) >= MIN_SCRUBBED}
    forms = set()
    for v in new:  # as written, and as a page or a JSON log line writes it
        forms |= {v, html.escape(v), json.dumps(v, ensure_ascii=False)[1:-1], json.dumps(v)[1:-1]}
    with _lock:
        _known = tuple(sorted(set(_known) | forms, key=len, reverse=True))


def forget() -> None:
    """No remembered secret (tests)."""
    global _known
    with _lock:
        _known = ()


def text(value: str) -> str:
    """``value`` with every URL's password and every remembered secret replaced."""
    if not value:
        return value
    value = hide_url_password(value)
    for secret in _known:
        if secret in value:
            value = value.replace(secret, HIDDEN)
    return value


def shown_setting(name: str, value: str) -> str:
    """What `beanmail settings` prints for a setting's value: ``(set)`` for a secret, a URL
    without its password."""
    if is_secret_setting(name) and value:
        return SET
    return text(value)


# -- a job's context --------------------------------------------------------------------------------
# a field is secret when its name, or one word of it (split at _ - . and camelCase), is one of
# these: "reset_token" and "resetToken" are, "author", "signed" and "key" (the idempotency key)
# are not
SECRET_WORDS = frozenset({"sig", "secret", "secrets", "password", "passwd", "passphrase", "pwd",
                          "token", "tokens", "auth", "authorization", "credential", "credentials", "apikey",
                          "cookie", "otp", "totp", "pin", "cvv", "cvc"})
SECRET_NAMES = frozenset({"api_key", "private_key", "secret_key", "access_key", "signing_key", "client_key",
                          "session_id", "set_cookie", "card_number"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def is_secret_field(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(name)]
    return "_".join(words) in SECRET_NAMES or any(w in SECRET_WORDS for w in words)


def redact_fields(value: Any, depth: int = 0) -> Any:
    """``value`` with the value of every secret field, at any depth, replaced by ``(hidden)``;
    anything nested deeper than 100 levels is cut there."""
    if depth > 100:
        return "(nested too deep)"
    if isinstance(value, dict):
        return {k: (HIDDEN if is_secret_field(str(k)) else redact_fields(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_fields(v, depth + 1) for v in value]
    return value
