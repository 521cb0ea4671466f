"""The application code under test: a sign-up that commits a row and mails after the commit."""
from django.core.mail import send_mail
from django.db import transaction

from producer.django import notify_on_commit, priority

from .models import Customer


def sign_up(email: str, name: str) -> Customer:
    with transaction.atomic():
        customer = Customer.objects.create(email=email, name=name)
        notify_on_commit("welcome", f"{name} <{email}>", {"name": name}, key=f"welcome:{customer.pk}")
        with priority("urgent"):
            send_mail("Your receipt", f"Thanks, {name}.", None, [email])
    return customer
