"""Templates to text: a sandboxed jinja2 environment where a missing variable is an error,
and only the HTML part is autoescaped. An edited template is picked up without a restart: at most
once a second (``RELOAD_CHECK``) the files of the templates in use are checked by mtime."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .outcomes import Poison
from .validate import check_header_value


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


RELOAD_CHECK = 1.0  # seconds between checks of the templates' files for edits

_Parts = tuple[jinja2.Template, jinja2.Template, "jinja2.Template | None"]


class Renderer:
    def __init__(self, directory: str) -> None:
        from .settings import SettingsError

        if not os.path.isdir(directory):
            raise SettingsError(f"BEANMAIL_TEMPLATES: {directory!r} is not a directory (it is relative to the"
                                f" folder the program runs in, {os.getcwd()!r})")
        self.directory = directory
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(directory, encoding="utf-8"),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: bool(name) and name.endswith(".html"),
            auto_reload=True,  # get_template recompiles an edited file; _templates asks at most once a second
            keep_trailing_newline=True,
            cache_size=-1,
        )
        # a template's parts, with its folder's mtime (a body.html added or removed changes it)
        self._parts: dict[str, tuple[_Parts, int]] = {}
        self._checked = time.monotonic()

    def _folder_mtime(self, name: str) -> int:
        try:
            return os.stat(os.path.join(self.directory, name)).st_mtime_ns
        except (OSError, ValueError):
            return 0

    def _drop_edited(self) -> None:
        """Forget the templates whose files changed since they were compiled."""
        for name, (parts, mtime) in list(self._parts.items()):
            if self._folder_mtime(name) != mtime or not all(t.is_up_to_date for t in parts if t is not None):
                del self._parts[name]

    def _templates(self, name: str) -> _Parts:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK:
            self._checked = now
            self._drop_edited()
        cached = self._parts.get(name)
        if cached is not None:
            return cached[0]
        mtime = self._folder_mtime(name)
        try:
            subject = self._env.get_template(f"{name}/subject.txt")
            text = self._env.get_template(f"{name}/body.txt")
        except jinja2.TemplateNotFound:
            raise Poison(f"unknown template {name!r}: needs {name}/subject.txt and {name}/body.txt") from None
        except jinja2.TemplateSyntaxError as exc:
            raise Poison(f"template {exc.name}: syntax error line {exc.lineno}: {exc.message}") from None
        try:
            html: jinja2.Template | None = self._env.get_template(f"{name}/body.html")
        except jinja2.TemplateNotFound:
            html = None
        except jinja2.TemplateSyntaxError as exc:
            raise Poison(f"template {exc.name}: syntax error line {exc.lineno}: {exc.message}") from None
        parts = (subject, text, html)
        self._parts[name] = (parts, mtime)
        return parts

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        return render_parts(name, *self._templates(name), context)


def _render(template: jinja2.Template, shared: dict[str, Any]) -> str:
    return template.environment.concat(template.root_render_func(template.new_context(shared, shared=True)))  # type: ignore[attr-defined]


def render_parts(what: str, subject_t: jinja2.Template, text_t: jinja2.Template, html_t: jinja2.Template | None,
                 context: Mapping[str, Any]) -> Rendered:
    """The three parts of a message (a notification's, a digest's), every template failure
    poison naming ``what``."""
    try:
        # one context for the three templates (Template.render would copy it for each)
        shared = {**subject_t.globals, **context}
        subject = _render(subject_t, shared).strip()
        text = _render(text_t, shared)
        html = _render(html_t, shared) if html_t is not None else None
    except jinja2.UndefinedError as exc:
        raise Poison(f"render {what}: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise Poison(f"render {what}: sandbox refused: {exc}") from None
    except jinja2.TemplateError as exc:
        raise Poison(f"render {what}: {type(exc).__name__}: {exc}") from None
    if not subject:
        raise Poison(f"render {what}: the subject is empty")
    check_header_value("Subject", subject)
    return Rendered(subject, text, html)
