from __future__ import annotations

from datetime import date

from django.db import transaction

from doctorjob import Child, enqueue
from doctorjob.models import Job

from .models import Client


def sign_up(email: str) -> Client:
    """Create a client and its login-link job in one transaction: both are saved or neither."""
    with transaction.atomic():
        client = Client.objects.create(email=email)
        enqueue("accounts.send_login_link", {"client_id": client.pk}, key=f"login-link:{client.pk}")
    return client


def request_signup_report(days: list[date]) -> Job:
    """Enqueue a report of the sign-ups of ``days``: one fetch per day, the report once all are in.
    A failed fetch does not sink the report (``on_failure="ignore"``): it says what is missing."""
    with transaction.atomic():
        return enqueue(
            "accounts.write_signup_report",
            children=[Child("accounts.count_signups", {"day": day.isoformat()}, on_failure="ignore") for day in days],
        )
