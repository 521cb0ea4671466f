from django.contrib import admin

from producer.django.admin import MailoutProgress, mailout_action

from .models import Issue, Subscriber


def subscribers(issues):
    return [{"address": s.email, "name": s.name} for s in Subscriber.objects.order_by("email")]


@admin.register(Issue)
class IssueAdmin(MailoutProgress, admin.ModelAdmin):
    actions = [mailout_action("update", recipients=subscribers)]
