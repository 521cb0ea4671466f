"""Calendar arithmetic in the recipient's time zone: when a period ends, and how long quiet hours
still run. Pure functions of ``now`` (Unix seconds), so tests pass a fake clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from producer.prefs import zone

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Schedule:
    hour: int = 8  # daily and weekly digests go at this local hour
    weekday: int = 0  # weekly digests go on this day (0 = Monday)
    timezone: str = "UTC"  # for recipients who set none


def _wall(local: datetime) -> float:
    """Unix seconds of a local wall-clock time. A time skipped by a DST change counts as the
    instant after the gap; zoneinfo's fold=0 reading does that."""
    return local.timestamp()


def period_end(period: str, now: float, tz: ZoneInfo, schedule: Schedule) -> float:
    """The first end of a ``period`` strictly after ``now``: the next full hour; the next
    ``schedule.hour`` o'clock; that hour on the next ``schedule.weekday``."""
    local = datetime.fromtimestamp(now, tz)
    if period == "hourly":
        end = local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return _wall(end)
    end = local.replace(hour=schedule.hour, minute=0, second=0, microsecond=0)
    if period == "daily":
        step = 1
    elif period == "weekly":
        end += timedelta(days=(schedule.weekday - local.weekday()) % 7)
        step = 7
    else:
        raise ValueError(f"unknown digest period {period!r}")
    while _wall(end) <= now:
        end += timedelta(days=step)
    return _wall(end)


def quiet_left(now: float, tz: ZoneInfo, start: int, end: int) -> float:
    """Seconds until quiet hours ``start``-``end`` (minutes after local midnight, may span
    midnight) end, or 0 when ``now`` is outside them."""
    if start < 0 or start == end:
        return 0.0
    local = datetime.fromtimestamp(now, tz)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return 0.0
    until = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if until <= local:
        until += timedelta(days=1)
    return max(1.0, _wall(until) - now)


def local_text(ts: float, tz: ZoneInfo) -> str:
    """``2026-11-23 08:00`` in the recipient's zone: what a digest shows as an item's time."""
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")


def utc_label(ts: float) -> str:
    """``2026-11-23T07:00Z``: a period end inside a digest's key."""
    return datetime.fromtimestamp(ts, ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%MZ")


def weekday(name: str | int) -> int:
    if isinstance(name, int) or str(name).isdigit():
        day = int(name)
    else:
        day = WEEKDAYS.index(str(name).strip().lower()) if str(name).strip().lower() in WEEKDAYS else -1
    if not 0 <= day <= 6:
        raise ValueError(f"a weekday name ({', '.join(WEEKDAYS)}) or 0-6, got {name!r}")
    return day


__all__ = ["Schedule", "WEEKDAYS", "local_text", "period_end", "quiet_left", "utc_label", "weekday", "zone"]
