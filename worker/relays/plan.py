"""Which relays each priority's mail goes through, in the order they are tried.

Normal mail uses BEANMAIL_SMTP_URL (one relay, or several comma-separated). BEANMAIL_SMTP_URL_URGENT
and BEANMAIL_SMTP_URL_BULK give urgent and bulk mail relays of their own; BEANMAIL_SMTP_URL's
relays follow them as fallbacks, so a priority whose own relays are all down still has a way out.
"""

from __future__ import annotations

from dataclasses import dataclass

from producer.envelope import PRIORITIES

from ..settings import Settings, SettingsError, SmtpTarget, parse_smtp_urls


@dataclass(frozen=True)
class RelayPlan:
    routes: dict[str, tuple[SmtpTarget, ...]]  # priority -> relays in the order tried

    @classmethod
    def from_settings(cls, s: Settings) -> "RelayPlan":
        common = tuple(parse_smtp_urls(s.smtp_url, "BEANMAIL_SMTP_URL"))
        own = {"urgent": s.smtp_url_urgent, "bulk": s.smtp_url_bulk}
        routes = {}
        for priority in PRIORITIES:
            value = own.get(priority, "")
            first = tuple(parse_smtp_urls(value, f"BEANMAIL_SMTP_URL_{priority.upper()}")) if value else ()
            mine = {(t.host, t.port) for t in first}
            routes[priority] = first + tuple(t for t in common if (t.host, t.port) not in mine)
        return cls(routes)

    @property
    def relays(self) -> list[SmtpTarget]:
        """Every relay once, in the order first met (urgent, normal, bulk)."""
        seen: dict[str, SmtpTarget] = {}
        for targets in self.routes.values():
            for t in targets:
                seen.setdefault(relay_name(t), t)
        return list(seen.values())

    def priorities_of(self, target: SmtpTarget) -> list[str]:
        return [p for p, targets in self.routes.items() if any(relay_name(t) == relay_name(target) for t in targets)]


def relay_name(target: SmtpTarget) -> str:
    """How a relay is named in logs, reasons, `beanmail status` and /metrics: never its credentials."""
    return f"{'smtps' if target.tls == 'ssl' else 'smtp'}://{target.host}:{target.port}"


def validate_relays(s: Settings) -> None:
    """Every relay list parsed and the queue settings paired, at start (SettingsError names the
    variable)."""
    if s.transport == "smtp":
        RelayPlan.from_settings(s)
    else:
        for name in ("smtp_url_urgent", "smtp_url_bulk"):
            if getattr(s, name):
                raise SettingsError(f"BEANMAIL_{name.upper()}: relays by priority need BEANMAIL_TRANSPORT=smtp"
                                    f" (it is {s.transport!r})")
    if s.relay_queue_command and s.relay_queue_high <= 0:
        raise SettingsError("BEANMAIL_RELAY_QUEUE_HIGH: BEANMAIL_RELAY_QUEUE_COMMAND is set: name the queue length"
                            " (a positive number of messages) at which bulk mail is held")
    if s.relay_queue_high and not s.relay_queue_command:
        raise SettingsError("BEANMAIL_RELAY_QUEUE_COMMAND: BEANMAIL_RELAY_QUEUE_HIGH is set but no command says"
                            " the queue's length (e.g. `postqueue -j`)")
    if s.relay_queue_high < 0:
        raise SettingsError(f"BEANMAIL_RELAY_QUEUE_HIGH: must be 0 (off) or more, got {s.relay_queue_high!r}")
    for name in ("relay_retry_after", "relay_queue_interval", "relay_hold_delay", "relay_pace_max", "relay_pace_min",
                 "relay_pace_step", "relay_latency_target"):
        value = getattr(s, name)
        if not value > 0 or value == float("inf"):
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a positive number, got {value!r}")
    if s.relay_pace_min > s.relay_pace_max:
        raise SettingsError(f"BEANMAIL_RELAY_PACE_MIN ({s.relay_pace_min:g}) must not exceed"
                            f" BEANMAIL_RELAY_PACE_MAX ({s.relay_pace_max:g})")
