"""structlog set-up: one JSON event per line on stdout, which supervisord captures and rotates."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, TextIO

import structlog

from . import redact

_json_out: TextIO | None = None  # where configure() sends JSON lines; None: through structlog


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    global _json_out
    _json_out = sys.stdout if fmt == "json" and level <= logging.INFO else None
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _hide_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )


def _hide_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """No log line shows a password from a URL or a secret setting's value (worker.redact)."""
    return {k: _scrubbed(v) for k, v in event.items()}


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return redact.text(value)
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return redact.text(repr(value))
    return value


def mask(address: str) -> str:
    """``zoe@example.com`` -> ``z***@example.com``: enough to tell mails apart, not to harvest."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


# a quoted text holding an '@' and no '<' (an address as a reason quotes it: 'bad address@@example.com')
_QUOTED_ADDRESS = re.compile(r"""(?P<q>['"])(?P<text>[^'"<>\n]*@[^'"<>\n]*)(?P=q)""")
# a quoted local part: "bad address"@example.com
_QUOTED_LOCAL = re.compile(r""""(?P<local>[^"\n]*)"(?P<rest>@[^\s<>(),;"']*)""")
# anything else holding an '@', up to the characters that end an address in text: the local part
# stops at a space, a bracket, a quote, ':' (rcpt:zoe@...); the domain may hold ':' ([IPv6:::1])
_AT_RUN = re.compile(r"""[^\s<>(),;:"'@]*@[^\s<>(),;"']*""")


def _masked(run: str) -> str:
    """``local@domain`` -> ``l***@domain``, however malformed: the local part is everything before
    the first '@', the domain the first word after the last one."""
    local, _, rest = run.partition("@")
    domain = rest.rpartition("@")[2]
    domain, space, tail = domain.partition(" ")
    return f"{local[:1]}***@{domain}{space}{tail}"


def mask_text(text: str) -> str:
    """Every address inside a key, an SMTP reply or a reason, masked as ``mask`` does; a
    malformed one too (``bad address@@example.com``: its quoted form entirely, else the word
    holding the '@')."""
    if "@" not in text:
        return text
    text = _QUOTED_LOCAL.sub(lambda m: f'"{m["local"][:1]}***"{m["rest"].rpartition("@")[1]}'
                                       f'{m["rest"].rpartition("@")[2]}', text)
    text = _QUOTED_ADDRESS.sub(lambda m: m["q"] + _masked(m["text"].strip()) + m["q"], text)
    return _AT_RUN.sub(lambda m: _masked(m[0]) if not m[0].startswith("@") and "***@" not in m[0] else m[0], text)


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("beanmail").bind(**bound)


def events(name: str, entries: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Several events of one name (a batch's ``job`` lines), ``(level, fields)`` each. In the JSON
    format they are written here in one write, line for line what configure's processors would
    write (the fields, then event, level and timestamp); otherwise through structlog."""
    out = _json_out
    if out is None:
        log = get_logger()
        for level, fields in entries:
            getattr(log, level)(name, **fields)
        return
    stamp = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    lines = [json.dumps({**fields, "event": name, "level": level, "timestamp": stamp}, default=repr)
             for level, fields in entries]
    if lines:
        out.write(redact.text("\n".join(lines)) + "\n")
        out.flush()
