"""The producer's configuration: the same ``beanmail.toml`` (or the file ``BEANMAIL_CONFIG``
names) and ``BEANMAIL_*`` variables the workers read, a framework's own settings on top (Django's
``BEANMAIL`` dict, Flask's ``BEANMAIL_*`` config), checked when the application starts rather
than at its first send.

Precedence, lowest first: defaults, the file's ``[beanmail]`` table, the environment, the
framework's settings. Only what a producer uses is read (the beanstalkd URL, the secret, the
spool, the store, the TTR); the workers check the rest of the file at their own start. A
framework key that is no setting is an error naming the closest one; a store path that does not
exist is an error (a web app must use the workers' store, never create one of its own).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .beanstalk import split_urls

DEFAULT_URL = "beanstalk://127.0.0.1:11300"
DEFAULT_TTR = 120

# a producer setting -> (the file's key, the environment variable, the framework's key)
KEYS: dict[str, tuple[str, str, str]] = {
    "url": ("beanstalk_url", "BEANMAIL_BEANSTALK_URL", "URL"),
    "secret": ("secret", "BEANMAIL_SECRET", "SECRET"),
    "spool": ("spool", "BEANMAIL_SPOOL", "SPOOL"),
    "store": ("store", "BEANMAIL_STORE", "STORE"),
    "ttr": ("ttr", "BEANMAIL_TTR", "TTR"),
}


class ConfigError(ValueError):
    """A producer setting is malformed; the message names the setting and where it was read."""


@dataclass(frozen=True)
class ProducerConfig:
    url: str = DEFAULT_URL
    secret: str | None = None
    spool: str | None = None
    store: str | None = None
    ttr: int = DEFAULT_TTR
    # where each value came from: "default", "beanmail.toml", "BEANMAIL_SECRET", "BEANMAIL['SECRET']", ...
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    # the framework's own keys beyond the producer's (PRIORITY, ON_COMMIT, TEST, ...), as given
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def notifier(self) -> Any:
        from .client import Notifier

        return Notifier(self.url, secret=self.secret or None, ttr=self.ttr, spool=self.spool or "",
                        blobs=self.store or "")


def load(framework: Mapping[str, Any] | None = None, *, label: str = "BEANMAIL",
         framework_keys: Iterable[str] = (), environ: Mapping[str, str] | None = None,
         path: str | None = None, check_store: bool = True) -> ProducerConfig:
    """``framework``: the framework's settings, with the keys of KEYS' last column (``URL``,
    ``SECRET``, ...) and ``framework_keys`` (its own, such as ``ON_COMMIT``); ``label`` names them
    in errors (``BEANMAIL['SECRET']`` for Django, ``BEANMAIL_SECRET`` for Flask). ``check_store``
    False: the store path need not exist (the test backend queues nothing)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in KEYS}
    table, where = read_table(environ, path)
    for name, (toml_key, variable, _) in KEYS.items():
        if toml_key in table:
            values[name], sources[name] = table[toml_key], where
        if environ.get(variable):
            values[name], sources[name] = environ[variable], variable
    allowed = {fw for _, _, fw in KEYS.values()} | set(framework_keys)
    extra: dict[str, Any] = {}
    for key, value in (framework or {}).items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            raise ConfigError(f"{_name(label, key)} is not a beanmail setting"
                              + (f"; did you mean {_name(label, close[0])}?" if close else "")
                              + f" (the settings: {', '.join(sorted(allowed))})")
        name = next((n for n, (_, _, fw) in KEYS.items() if fw == key), None)
        if name is None:
            extra[key] = value
        elif value is not None:
            values[name], sources[name] = value, _name(label, key)
    return _checked(values, sources, extra, check_store)


def _name(label: str, key: str) -> str:
    return f"{label}[{key!r}]" if not label.endswith("_") else f"{label}{key}"


def read_table(environ: Mapping[str, str], path: str | None) -> tuple[dict[str, Any], str]:
    """The ``[beanmail]`` table of the settings file (``path``, else BEANMAIL_CONFIG, else
    ./beanmail.toml if there is one) and the file's name; ({}, "") without a file. The workers
    read it through here too (worker/settings.py)."""
    path = path or environ.get("BEANMAIL_CONFIG")
    if path is None:
        if not os.path.isfile("beanmail.toml"):
            return {}, ""
        path = "beanmail.toml"
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"BEANMAIL_CONFIG: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BEANMAIL_CONFIG: {path} is not valid TOML: {exc}") from None
    table = data.get("beanmail", data)
    if not isinstance(table, dict):
        raise ConfigError(f"BEANMAIL_CONFIG: {path}: [beanmail] must be a table")
    return table, path


def _checked(values: dict[str, Any], sources: dict[str, str], extra: dict[str, Any],
             check_store: bool = True) -> ProducerConfig:
    def fail(name: str, why: str) -> ConfigError:
        return ConfigError(f"{sources[name]}: {why}")

    url = str(values.get("url") or DEFAULT_URL)
    try:
        split_urls(url)
    except ValueError as exc:
        raise fail("url", str(exc)) from None
    secret = values.get("secret")
    if secret:
        keys = secret.split(",") if isinstance(secret, str) else [str(k) for k in secret]
        if not any(k.strip() for k in keys):
            raise fail("secret", "names no key (a comma-separated list: the first signs, all verify)")
        secret = ",".join(k.strip() for k in keys if k.strip())
    try:
        ttr = int(values.get("ttr", DEFAULT_TTR))
        if ttr < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise fail("ttr", f"{values.get('ttr')!r} is not a whole number of seconds above 0") from None
    store = str(values["store"]) if values.get("store") else None
    if store and "://" not in store and store != ":memory:":
        store = os.path.abspath(store)
        if check_store and not os.path.isfile(store):
            raise fail("store", f"{store} does not exist: point it at the store the workers use (their"
                                f" BEANMAIL_STORE, created at a worker's first start or by `beanmail doctor`);"
                                f" a web app never creates one")
    spool = os.path.abspath(str(values["spool"])) if values.get("spool") else None
    return ProducerConfig(url=url, secret=secret or None, spool=spool, store=store, ttr=ttr,
                          sources=sources, extra=extra)
