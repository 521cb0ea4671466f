"""A recipient's delivery preferences: digest mode, time zone, quiet hours (docs/digests.md).

They live in the worker's store (``BEANMAIL_STORE``) because every worker consults them as it
sends; a web application writes them here directly (``Notifier.set_preferences``), so a change
holds for the very next notification. Either side creates the table if missing, with the same
statement. Standard library only (psycopg for a PostgreSQL store, as ``producer.blobs``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .blobs import BlobError, BlobStore

# "" = no preference: the job's own ``digest`` field decides (immediate when it has none)
MODES = ("", "immediate", "hourly", "daily", "weekly", "off")
TABLE = ("CREATE TABLE IF NOT EXISTS digest_prefs (address TEXT PRIMARY KEY, mode TEXT NOT NULL DEFAULT '',"
         " timezone TEXT NOT NULL DEFAULT '', quiet_start INTEGER NOT NULL DEFAULT -1,"
         " quiet_end INTEGER NOT NULL DEFAULT -1, updated_at DOUBLE PRECISION NOT NULL)")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Preferences:
    address: str
    mode: str = ""  # one of MODES
    timezone: str = ""  # an IANA name; "" = the workers' BEANMAIL_DIGEST_TIMEZONE
    quiet_start: int = -1  # minutes after local midnight; -1: no quiet hours of their own
    quiet_end: int = -1

    @property
    def quiet(self) -> str:
        """``22:00-07:00``, or "" without quiet hours."""
        if self.quiet_start < 0:
            return ""
        (a, b), (c, d) = divmod(self.quiet_start, 60), divmod(self.quiet_end, 60)
        return f"{a:02d}:{b:02d}-{c:02d}:{d:02d}"

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "mode": self.mode or "default", "timezone": self.timezone or "default",
                "quiet": self.quiet or "none"}


def check_mode(mode: str | None) -> str:
    mode = (mode or "").strip().lower()
    mode = "" if mode == "default" else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of default, {', '.join(m for m in MODES if m)}; got {mode!r}")
    return mode


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """An IANA time zone; ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from exc


def check_timezone(name: str | None) -> str:
    name = (name or "").strip()
    if name and name != "default":
        zone(name)
        return name
    return ""


def parse_quiet(text: str | tuple[str, str] | None) -> tuple[int, int]:
    """``"22:00-07:00"`` (or a pair of clock times) -> minutes after midnight; None, "" or
    "none" -> (-1, -1). Start and end may not be equal (that would be all day or never)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "off")):
        return -1, -1
    start, end = (text.split("-", 1) + [""])[:2] if isinstance(text, str) else text
    m, n = _CLOCK.fullmatch(start.strip()), _CLOCK.fullmatch(end.strip())
    if not m or not n:
        raise ValueError(f"quiet hours must look like 22:00-07:00, got {text!r}")
    a, b = int(m[1]) * 60 + int(m[2]), int(n[1]) * 60 + int(n[2])
    if a == b:
        raise ValueError(f"quiet hours {text!r} start and end at the same time")
    return a, b


class PreferenceStore:
    """The preferences table, over a blob store's connection handling (one connection under a
    lock, a dropped PostgreSQL connection reopened once). Thread-safe."""

    def __init__(self, location: str, timeout: float = 30.0) -> None:
        self._db = BlobStore(location, timeout)
        try:
            self._run(TABLE)
        except BlobError as exc:  # PostgreSQL: another process created it at the same instant
            if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                raise

    def _run(self, sql: str, args: tuple[Any, ...] = (), fetch: bool = False) -> Any:
        with self._db._lock:
            cursor = self._db._execute(sql, args)
            return cursor.fetchone() if fetch else cursor.rowcount

    def set(self, address: str, *, mode: str | None = None, timezone: str | None = None,
            quiet: str | tuple[str, str] | None = "keep") -> Preferences:
        """Changes only what is given (``quiet="keep"`` leaves quiet hours as they are)."""
        old = self.get(address) or Preferences(address.lower())
        start, end = (old.quiet_start, old.quiet_end) if quiet == "keep" else parse_quiet(quiet)
        new = Preferences(address.lower(), check_mode(mode) if mode is not None else old.mode,
                          check_timezone(timezone) if timezone is not None else old.timezone, start, end)
        self._run("INSERT INTO digest_prefs (address, mode, timezone, quiet_start, quiet_end, updated_at)"
                  " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET mode = excluded.mode,"
                  " timezone = excluded.timezone, quiet_start = excluded.quiet_start,"
                  " quiet_end = excluded.quiet_end, updated_at = excluded.updated_at",
                  (new.address, new.mode, new.timezone, new.quiet_start, new.quiet_end, time.time()))
        return new

    def get(self, address: str) -> Preferences | None:
        row = self._run("SELECT address, mode, timezone, quiet_start, quiet_end FROM digest_prefs"
                        " WHERE address = ?", (address.lower(),), fetch=True)
        return Preferences(*row) if row else None

    def clear(self, address: str) -> bool:
        return self._run("DELETE FROM digest_prefs WHERE address = ?", (address.lower(),)) > 0

    def close(self) -> None:
        self._db.close()
