"""The sending stage's side of digests: divert a notification into its recipient's digest or
hold it through quiet hours (``divert``), and render a digest job (``render``).

Urgent mail is never held or folded, nor are raw jobs (a framework's prebuilt mail may be a
sign-in link). The recipient's preference decides over the job's own ``digest`` field.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from producer.envelope import DIGEST_PERIODS, Envelope
from producer.prefs import parse_quiet, zone

from ..entities import Registry
from ..outcomes import Poison, Skipped, Wait
from ..render import Rendered, Renderer, render_parts
from ..settings import Settings
from ..store import Store
from .periods import Schedule, local_text, period_end, quiet_left, utc_label
from .records import DigestRecords, Preferences

DEFAULT_GROUP = "_digest"  # the template of a digest across templates, and the fallback's folder
# What a template without digest files (and a templates folder without _digest/) renders with;
# the same text as templates/_digest/ (docs/digests.md).
BUILTIN = {
    "digest_subject.txt": "{{ count }} new notification{{ 's' if count != 1 else '' }} ({{ period }} digest)",
    "digest.txt": """Hello {{ recipient.name or recipient.address }},

{% if more %}The newest {{ items|length }} of {{ count }} notifications ({{ more }} older not shown):
{% else %}{{ count }} notification{{ 's' if count != 1 else '' }} since your last digest:
{% endif %}
{% for item in items %}
* {{ item.time }}  {{ item.subject }}

{{ item.text | trim | indent(4, true) }}

{% endfor %}
You get this digest because you chose {{ period }} digests.
""",
}


def schedule(settings: Settings) -> Schedule:
    from .periods import weekday

    return Schedule(settings.digest_hour, weekday(settings.digest_weekday), settings.digest_timezone)


class Digests:
    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.records = DigestRecords(store)
        self.registry = registry
        self.schedule = schedule(settings)
        self.default_quiet = parse_quiet(settings.quiet_hours or None)
        self._renderer: Renderer | None = None
        self._env: SandboxedEnvironment | None = None

    # -- divert ---------------------------------------------------------------------------------
    def divert(self, envelope: Envelope, now: float | None = None,
               prefs: Mapping[str, Preferences] | None = None) -> None:
        """Returns when the mail goes now; raises Skipped when it was collected into a digest
        (or the recipient turned notifications off), Deferred with a delay of its own (no retry
        spent) while the recipient's quiet hours last. ``prefs``: the batch's preferences, read
        in one query (``DigestRecords.preferences_many``); looked up here without them."""
        if envelope.kind != "mail" or envelope.priority == "urgent":
            return
        now = time.time() if now is None else now
        address = envelope.recipient.address
        pref = prefs.get(address.lower()) if prefs is not None else self.records.preferences(address)
        tz = zone((pref.timezone if pref else "") or self.schedule.timezone)
        mode = (pref.mode if pref else "") or envelope.digest or "immediate"
        if mode == "off":  # a digest collected before they turned it off too
            raise Skipped("the recipient turned notifications off (digest preference off)")
        if envelope.digest != "compiled":
            if mode in DIGEST_PERIODS and self._collect(envelope, mode, tz, now):
                due = period_end(mode, now, tz, self.schedule)
                raise Skipped(f"collected into the {mode} digest due {local_text(due, tz)} {tz.key}")
        start, end = (pref.quiet_start, pref.quiet_end) if pref and pref.quiet_start >= 0 else self.default_quiet
        left = quiet_left(now, tz, start, end)
        if left and not (envelope.created_at and envelope.created_at <= self.records.quiet_lifted()):
            # back when they end (a minute's spread, not all at once), or sooner to notice a change
            delay = min(math.ceil(left) + random.randint(0, 59), self.settings.quiet_recheck)
            raise Wait(f"quiet hours until {local_text(now + left, tz)} {tz.key}", int(delay))

    def _collect(self, envelope: Envelope, period: str, tz: Any, now: float) -> bool:
        recipient = envelope.recipient
        context = dict(envelope.context)
        context.update(recipient.context)
        item = {"template": envelope.template, "name": recipient.name, "context": context, "period": period,
                "tz": tz.key}
        if envelope.entities:
            item["entities"] = envelope.entities
        if envelope.not_after is not None:
            item["not_after"] = envelope.not_after
        group = DEFAULT_GROUP if self.settings.digest_group == "recipient" else envelope.template
        due = period_end(period, now, tz, self.schedule)
        return self.records.collect(
            envelope.id, recipient.address.lower(), group, envelope.template, due, envelope.created_at or now, item,
            f"collected into the {period} digest due {utc_label(due)}")

    # -- render ---------------------------------------------------------------------------------
    def render(self, renderer: Renderer, envelope: Envelope, context: Mapping[str, Any]) -> Rendered:
        """A digest job's message: each item's own subject and text rendered with its template
        (its entities resolved now, as a single notification's would be), then the digest files
        of ``envelope.template`` (or _digest/, or the built-in default) over ``items``."""
        now = time.time()
        items = []
        for raw in context.get("items") or ():
            if not isinstance(raw, dict) or not isinstance(raw.get("context"), dict):
                raise Poison("digest: 'items' must be objects with a 'context'")
            if raw.get("not_after") is not None and now > raw["not_after"]:
                continue
            try:
                resolved = self.registry.resolve(raw.get("entities") or {},
                                                 (context.get("recipient") or {}).get("address"))
            except Skipped:
                continue  # its entity is gone: so is the item
            item = {**raw["context"], **resolved}
            single = renderer.render(raw.get("template") or envelope.template,
                                     {**item, "recipient": context.get("recipient", {})})
            item.update(time=raw.get("time", ""), template=raw.get("template", ""), subject=single.subject,
                        text=single.text)
            items.append(item)
        if not items:
            raise Skipped("digest: every item expired or its entity is gone")
        return self._render(renderer, envelope.template, {**context, "items": items})

    def _render(self, renderer: Renderer, name: str, context: Mapping[str, Any]) -> Rendered:
        env = self._environment(renderer)
        try:
            folder = next(f for f in (name, DEFAULT_GROUP, "<builtin>") if self._has(env, f"{f}/digest.txt"))
            subject_t = env.get_template(next(f"{f}/digest_subject.txt" for f in (folder, DEFAULT_GROUP, "<builtin>")
                                              if self._has(env, f"{f}/digest_subject.txt")))
            text_t = env.get_template(f"{folder}/digest.txt")
            html_t = env.get_template(f"{folder}/digest.html") if self._has(env, f"{folder}/digest.html") else None
        except jinja2.TemplateSyntaxError as exc:
            raise Poison(f"template {exc.name}: syntax error line {exc.lineno}: {exc.message}") from None
        return render_parts(f"{name} digest", subject_t, text_t, html_t, context)

    @staticmethod
    def _has(env: SandboxedEnvironment, path: str) -> bool:
        try:
            env.get_template(path)
            return True
        except jinja2.TemplateNotFound:
            return False

    def _environment(self, renderer: Renderer) -> SandboxedEnvironment:
        """Built per Renderer: a SIGHUP's new Renderer reloads the digest files too."""
        if self._env is None or self._renderer is not renderer:
            builtin = {f"<builtin>/{k}": v for k, v in BUILTIN.items()}
            self._env = SandboxedEnvironment(
                loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(renderer.directory, encoding="utf-8"),
                                            jinja2.DictLoader(builtin)]),
                undefined=jinja2.StrictUndefined,
                autoescape=lambda n: bool(n) and n.endswith(".html"),
                auto_reload=True, keep_trailing_newline=True, cache_size=-1)  # an edited digest file is read again
            self._renderer = renderer
        return self._env
