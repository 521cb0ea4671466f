"""structlog set-up: one JSON event per line on stdout, which supervisord captures and rotates."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, TextIO

import structlog

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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )


def mask(address: str) -> str:
    """``zoe@example.com`` -> ``z***@example.com``: enough to tell mails apart, not to harvest."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


_ADDRESS = re.compile(r"([^\s<>(),;:\"'@]+)@([A-Za-z0-9.\-\[\]:\u0080-\uffff]+)")


def mask_text(text: str) -> str:
    """Every address inside a key, an SMTP reply or a reason, masked as ``mask`` does."""
    if "@" not in text:
        return text
    return _ADDRESS.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)


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
        out.write("\n".join(lines) + "\n")
        out.flush()
