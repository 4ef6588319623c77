from __future__ import annotations

from django.db import transaction

from doctorjob import enqueue

from .models import Client


def sign_up(email: str) -> Client:
    """Create a client and its login-link job in one transaction: both are saved or neither."""
    with transaction.atomic():
        client = Client.objects.create(email=email)
        enqueue("accounts.send_login_link", {"client_id": client.pk}, key=f"login-link:{client.pk}")
    return client
