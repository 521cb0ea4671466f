"""The editor's button: "Send email update" on any ModelAdmin. The editor ticks objects, picks the
action, confirms on one page, and gets the page back at once: the chosen objects go into one
``mailout()`` (a put per 48 KB of recipients; the workers fan it out and send), recorded in the
store so its progress (sent / bounced / left) shows in the admin and in ``beanmail mailout
progress KEY``.

    from producer.django.admin import MailoutProgress, mailout_action

    @admin.register(Issue)
    class IssueAdmin(MailoutProgress, admin.ModelAdmin):          # the mixin: the progress page
        actions = [mailout_action("issue_update", recipients=lambda issues: Subscriber.objects.values_list(
                       "email", flat=True))]

``recipients(queryset)`` returns addresses (``"Zoë <zoe@example.com>"``, pairs, mappings), as
``mailout()`` takes them; ``context(queryset)`` the template's context (default: ``objects``, a
list of ``{"id", "title"}``, and ``count``). "producer.django" must be in ``INSTALLED_APPS`` (the
pages' templates) and ``BEANMAIL["STORE"]`` set for the progress. Without the mixin the action
still sends, and the changelist's message names the key.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable, Iterable, Mapping

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse

from ..addresses import AddressError
from ..blobs import BlobError
from ..client import EnqueueError, parse_recipient
from ..schedule import Schedule
from . import config, notifier

CONFIRM = "beanmail_confirm"


def default_context(queryset: QuerySet) -> dict[str, Any]:
    objects = [{"id": obj.pk, "title": str(obj)} for obj in queryset]
    return {"objects": objects, "count": len(objects)}


def mailout_action(template: str, *, recipients: Callable[[QuerySet], Iterable[Any]],
                   context: Callable[[QuerySet], Mapping[str, Any]] = default_context, priority: str = "bulk",
                   description: str = "Send email update", name: str = "send_email_update") -> Callable[..., Any]:
    """An admin action: a confirmation page first; confirmed, one mailout of ``template`` to
    ``recipients(queryset)`` with ``context(queryset)``, and a redirect to its progress."""

    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        try:
            people = [parse_recipient(r) for r in recipients(queryset)]
        except AddressError as exc:
            modeladmin.message_user(request, f"Not sent: {exc}", messages.ERROR)
            return None
        if not people:
            modeladmin.message_user(request, "Not sent: these objects have no recipients.", messages.WARNING)
            return None
        if request.POST.get(CONFIRM) != "yes":
            opts = modeladmin.model._meta
            return TemplateResponse(request, "beanmail/admin/confirm_mailout.html", {
                **modeladmin.admin_site.each_context(request), "title": f"{description}?", "opts": opts,
                "objects": list(queryset), "recipients": len(people), "template": template, "action": name,
                "confirm": CONFIRM, "description": description, "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"), "index": request.POST.get("index", "0"),
            })
        key = f"admin:{modeladmin.model._meta.label_lower}:{time.strftime('%Y%m%d%H%M%S')}:{secrets.token_hex(3)}"
        store = config().get("STORE") or ""
        schedule: Schedule | None = None
        try:
            if store:
                schedule = Schedule(store)
                schedule.record(key, template, priority)
            try:
                notifier().mailout(template, people, dict(context(queryset)), key=key, priority=priority)
            except Exception:
                if schedule is not None:
                    schedule.abandon(key)  # no record of a mailout that was not queued
                raise
            if schedule is not None:
                schedule.queued(key, len(people))
        except (EnqueueError, BlobError, ValueError) as exc:  # ValueError: text no mail can carry, a bad schedule
            modeladmin.message_user(request, f"Not sent: {exc}", messages.ERROR)
            return None
        finally:
            if schedule is not None:
                schedule.close()
        modeladmin.message_user(request, f"{description}: queued for {len(people)} recipient(s) as {key}.",
                                messages.SUCCESS)
        try:
            site = modeladmin.admin_site.name
            return HttpResponseRedirect(reverse(f"{site}:{_url_name(modeladmin)}", args=[key], current_app=site))
        except NoReverseMatch:  # no MailoutProgress on this ModelAdmin: back to the list
            return None

    action.__name__ = name
    action.short_description = description  # type: ignore[attr-defined]
    action.allowed_permissions = ("change",)  # type: ignore[attr-defined]
    return action


class MailoutProgress:
    """A ModelAdmin mixin: ``<changelist>/mailout/<key>/``, a mailout's progress, refreshing itself
    every 2 s until nothing is left (``?format=json`` for the figures alone)."""

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.mailout_progress_view)  # type: ignore[attr-defined]
        return [path("mailout/<path:key>/", view, name=_url_name(self)), *super().get_urls()]  # type: ignore[misc]

    def mailout_progress_view(self, request: HttpRequest, key: str) -> HttpResponse:
        if not self.has_change_permission(request):  # type: ignore[attr-defined]
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        store = config().get("STORE") or ""
        figures: dict[str, Any] = {"key": key}
        error = ""
        if not store:
            error = "BEANMAIL['STORE'] is not set: the progress lives in the workers' store"
        else:
            try:
                schedule = Schedule(store)
                try:
                    figures = schedule.progress(key).to_json()
                finally:
                    schedule.close()
            except BlobError as exc:
                error = str(exc)
        if request.GET.get("format") == "json":
            return JsonResponse({**figures, "error": error}, status=503 if error else 200)
        return TemplateResponse(request, "beanmail/admin/mailout_progress.html", {
            **self.admin_site.each_context(request), "title": f"Email update {key}",  # type: ignore[attr-defined]
            "opts": self.model._meta, "p": figures, "error": error,  # type: ignore[attr-defined]
            "refresh": not error and figures.get("left", 1) > 0,
        })


def _url_name(modeladmin: Any) -> str:
    opts = modeladmin.model._meta
    return f"{opts.app_label}_{opts.model_name}_mailout_progress"
