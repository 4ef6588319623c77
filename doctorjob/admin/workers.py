"""Workers: alive, late or lost, their heartbeats and last claims."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone
from django.utils.safestring import SafeString

from ..models import Worker
from .base import ReadOnlyAdmin
from .display import badge, when


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ("name", "state", "queues_display", "concurrency", "started", "heartbeat", "last_claim")
    list_filter = ("lost", "host")
    ordering = ("-started_at",)
    fields = (
        *("name", "host", "pid", "queues_display", "concurrency", "lease"),
        *("started", "heartbeat", "last_claim", "lost"),
    )

    @admin.display(description="state", ordering="lost")
    def state(self, worker: Worker) -> SafeString:
        """Alive, late (its heartbeat is older than its lease: stuck or gone) or lost."""
        if worker.lost:
            return badge("lost", "dead")
        if timezone.now() - worker.last_heartbeat > timedelta(seconds=worker.lease):
            return badge("late", "skipped")
        return badge("alive", "succeeded")

    @admin.display(description="queues", ordering="queues")
    def queues_display(self, worker: Worker) -> str:
        return worker.queues.replace(",", ", ") or "every queue"

    @admin.display(description="started", ordering="started_at")
    def started(self, worker: Worker) -> str:
        return when(worker.started_at)

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, worker: Worker) -> str:
        return when(worker.last_heartbeat)

    @admin.display(description="last claim", ordering="last_claimed_at")
    def last_claim(self, worker: Worker) -> str:
        return when(worker.last_claimed_at)
