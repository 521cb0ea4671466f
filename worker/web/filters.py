"""Buried jobs chosen by a filter (template, recipient domain, reason), for the console's
kick and delete: the same match for the list a page shows and the action its form posts, each
job checked again just before it is touched (another operator may have moved it meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import greenstalk

from producer.client import connect

from .. import ops
from ..settings import Settings
from . import figures

MAX_FIELD = 200  # characters a filter field may have; longer is refused, not cut
LISTED = 1000  # buried jobs a filter looks through (the store's record of what was buried, newest first)


@dataclass(frozen=True)
class BuriedFilter:
    template: str = ""
    domain: str = ""
    reason: str = ""  # a part of the reason, any case
    tube: str = ""

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> "BuriedFilter | str":
        """The filter, or why the fields cannot be one."""
        values = {name: fields.get(name, "").strip() for name in ("template", "domain", "reason", "tube")}
        for name, value in values.items():
            if len(value) > MAX_FIELD:
                return f"the {name} filter is {len(value):,} characters long; at most {MAX_FIELD}"
        values["domain"] = values["domain"].lstrip("@").lower()
        return cls(**values)

    @property
    def empty(self) -> bool:
        return not (self.template or self.domain or self.reason)

    def describe(self) -> str:
        said = [f"{n}={v}" for n, v in (("template", self.template), ("domain", self.domain),
                                       ("reason", self.reason), ("tube", self.tube)) if v]
        return ", ".join(said) or "no filter"

    def matches(self, view: dict[str, Any]) -> bool:
        envelope = figures.envelope_of(view.get("body") or "") or {}
        if self.template and str(envelope.get("template") or envelope.get("kind") or "") != self.template:
            return False
        if self.domain and self.domain not in _domains(envelope):
            return False
        if self.reason and self.reason.lower() not in str(view.get("reason") or "").lower():
            return False
        return True


def _domains(envelope: dict[str, Any]) -> set[str]:
    to = envelope.get("to")
    recipients = to if isinstance(to, list) else [to]
    out = set()
    for r in recipients:
        address = r.get("address") if isinstance(r, dict) else r
        if isinstance(address, str) and "@" in address:
            out.add(address.rpartition("@")[2].rstrip(">").lower())
    return out


def matching(settings: Settings, f: BuriedFilter) -> list[dict[str, Any]]:
    """The buried jobs the filter picks (at most LISTED looked at)."""
    return [v for v in ops.buried(settings, tube=f.tube or None, limit=LISTED) if f.matches(v)]


def apply(settings: Settings, f: BuriedFilter, action: str) -> tuple[int, int]:
    """Kick or delete every buried job the filter picks: (touched, matched). A job that is no
    longer buried when its turn comes is left alone."""
    jobs = matching(settings, f)
    touched = 0
    url = settings.beanstalk_urls[0]  # where ``ops.buried`` found them
    try:
        client = connect(url, timeout=5, encoding=None)
    except (OSError, ValueError) as exc:
        raise ops.OpsError(f"beanstalkd at {url} is unreachable: {exc}") from None
    with client:
        for view in jobs:
            try:
                if client.stats_job(view["id"])["state"] != "buried":
                    continue
                if action == "kick":
                    client.kick_job(view["id"])
                else:
                    client.delete(view["id"])
                touched += 1
            except greenstalk.NotFoundError:  # gone or taken meanwhile
                continue
    return touched, len(jobs)
