"""Job definitions and queues: run now, pause, resume; a definition's last run and success rate."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import OperationalError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from ..exceptions import DoctorJobError
from ..models import Job, JobDefinition, JobExecution, JobVersion, Outcome, QueueState
from .base import ReadOnlyAdmin, _TabularInline, plural
from .changelists import within
from .display import when

# A definition's last run and success rate read the jobs by name, which no index holds: on a big
# table and a rare job, give up rather than hold the page.
STATS_BUDGET_MS = 100
TOO_LONG = "unknown (its jobs are too rare in a big table to find quickly; filter the jobs by name)"


class JobVersionInline(_TabularInline):
    model = JobVersion
    fields = readonly_fields = ("number", "first_seen_s", "schedule", "options", "payload")
    ordering = ("-number",)
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="first seen")
    def first_seen_s(self, version: JobVersion) -> str:
        return when(version.first_seen)


@admin.register(JobDefinition)
class JobDefinitionAdmin(ReadOnlyAdmin):
    """Jobs the code declares (kept in sync by workers and ``sync_jobs``): run now, pause, resume."""

    list_display = ("name", "queue", "version", "min_version", "schedule", "paused", "retired", "updated_at_s")
    list_filter = ("paused", "retired", "queue")
    search_fields = ("name",)
    ordering = ("name",)
    actions = ("run_now", "pause", "resume")
    inlines = (JobVersionInline,)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "queue",
                    "version",
                    "min_version",
                    "schedule",
                    "scheduled_since_s",
                    "last_tick_s",
                    "paused",
                    "retired",
                    "options",
                    "payload",
                    "created_at_s",
                    "updated_at_s",
                )
            },
        ),
        ("Runs", {"fields": ("jobs_link", "last_run", "success_rate")}),
    )

    @admin.display(description="scheduled since")
    def scheduled_since_s(self, definition: JobDefinition) -> str:
        return when(definition.scheduled_since)

    @admin.display(description="last tick")
    def last_tick_s(self, definition: JobDefinition) -> str:
        return when(definition.last_tick)

    @admin.display(description="created")
    def created_at_s(self, definition: JobDefinition) -> str:
        return when(definition.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated_at_s(self, definition: JobDefinition) -> str:
        return when(definition.updated_at)

    @admin.display(description="jobs")
    def jobs_link(self, definition: JobDefinition) -> str:
        url = reverse("admin:doctorjob_job_changelist", current_app=self.admin_site.name)
        return format_html('<a href="{}?name={}">its jobs</a>', url, definition.name)

    @admin.display(description="last run")
    def last_run(self, definition: JobDefinition) -> str:
        """When its latest job started, found through the job table's primary key (a job rare
        in a big table may take too long to find: then it says so)."""
        latest = (
            Job.objects.filter(name=definition.name, started_at__isnull=False)
            .order_by("-id")
            .values_list("started_at", flat=True)
        )
        try:
            return when(within(latest.db, STATS_BUDGET_MS, latest.first))
        except OperationalError:
            return TOO_LONG

    @admin.display(description="success rate (last 1,000 attempts)")
    def success_rate(self, definition: JobDefinition) -> str:
        recent = (
            JobExecution.objects.filter(job__name=definition.name)
            .order_by("-job_id")
            .values_list("outcome", flat=True)[:1000]
        )
        try:
            outcomes = within(recent.db, STATS_BUDGET_MS, lambda: list(recent))
        except OperationalError:
            return TOO_LONG
        if not outcomes:
            return "-"
        succeeded = sum(outcome == Outcome.SUCCEEDED for outcome in outcomes)
        return f"{100 * succeeded / len(outcomes):.1f}% of {len(outcomes):,}"

    def has_run_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.run_jobdefinition") and self.has_view_permission(request)

    @admin.action(permissions=["run"], description="Run selected jobs now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        from ..operations import run_now

        done, failed = [], []
        for definition in queryset.filter(retired=False):
            try:
                done.append(run_now(definition.name))
            except DoctorJobError as exc:
                failed.append(f"{definition.name}: {exc}")
        if done:
            self.message_user(
                request,
                f"Enqueued {plural(len(done), 'job')}: " + ", ".join(f"#{j.pk} {j.name}" for j in done) + ".",
                messages.SUCCESS,
            )
        for problem in failed:
            self.message_user(request, problem, messages.ERROR)

    @admin.action(permissions=["change"], description="Pause selected jobs")
    def pause(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        count = queryset.update(paused=True)
        self.message_user(request, f"Paused {plural(count, 'job')}: workers will not claim them.")

    @admin.action(permissions=["change"], description="Resume selected jobs")
    def resume(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        count = queryset.update(paused=False)
        self.message_user(request, f"Resumed {plural(count, 'job')}.")


@admin.register(QueueState)
class QueueStateAdmin(ReadOnlyAdmin):
    """Queues known to the code; pausing one stops every worker claiming from it."""

    list_display = ("name", "paused", "updated_at_s")
    list_filter = ("paused",)
    ordering = ("name",)
    actions = ("pause", "resume")
    fields = ("name", "paused", "updated_at_s")

    @admin.display(description="updated", ordering="updated_at")
    def updated_at_s(self, queue: QueueState) -> str:
        return when(queue.updated_at)

    @admin.action(permissions=["change"], description="Pause selected queues")
    def pause(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        count = queryset.update(paused=True)
        self.message_user(request, f"Paused {plural(count, 'queue')}: workers will not claim from them.")

    @admin.action(permissions=["change"], description="Resume selected queues")
    def resume(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        count = queryset.update(paused=False)
        self.message_user(request, f"Resumed {plural(count, 'queue')}.")
