"""A read-only admin for jobs and dead letters whose state changes are explicit POST actions:
retry, cancel and purge jobs, requeue dead letters (optionally with a corrected payload), pause
and resume. The actions work on whatever a filter matches ("select all"), through
``operations``; the dashboard is in ``dashboard.py``, list performance in ``changelists.py``,
how values look in ``display.py``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from . import dashboard, operations
from .changelists import EstimatingPaginator, NameFilter, QueueFilter, defined_names
from .display import badge, folded, milliseconds, pre, pretty_json, when
from .exceptions import DoctorJobError, InvalidPayload
from .models import DeadLetter, Job, JobDefinition, JobExecution, JobVersion, Outcome, QueueState, Status, Worker

_pre, _pretty_json = pre, pretty_json


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _report(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, done: str, result: operations.Bulk, noun: str = "job"
) -> None:
    """One message: what was done, then in the same sentence what was skipped and why."""
    message = done
    reasons = list(result.skipped.items())
    if len(reasons) == 1:
        message += f"; skipped {_plural(reasons[0][1], noun)} {reasons[0][0]}"
    elif reasons:
        message += f"; skipped {_plural(result.skipped_count, noun)}: " + ", ".join(f"{n:,} {r}" for r, n in reasons)
    model_admin.message_user(request, message + ".", messages.SUCCESS if result.changed else messages.WARNING)


if TYPE_CHECKING:  # generic for type checkers only: Django's classes take no [] at run time
    _ModelAdmin = admin.ModelAdmin[Any]
    _TabularInline = admin.TabularInline[Any, Any]
else:
    _ModelAdmin, _TabularInline = admin.ModelAdmin, admin.TabularInline


class ReadOnlyAdmin(_ModelAdmin):
    """Rows change only through explicit actions: no add, and a change form that cannot save.

    A saved change form would write back every field as it was read, overwriting whatever a
    worker wrote in between.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Without obj this is the permission that actions declared with permissions=["change"]
        # check; with obj it is the change form, which stays view-only.
        return obj is None and super().has_change_permission(request)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return flatten_fieldsets(self.get_fieldsets(request, obj))


class JobExecutionInline(_TabularInline):
    """Every attempt of the job: who ran it, when, how long, how it ended."""

    model = JobExecution
    fields = readonly_fields = ("attempt", "outcome_badge", "worker", "started", "finished", "duration_ms", "error")
    ordering = ("attempt", "id")
    extra = 0
    can_delete = False
    verbose_name_plural = "attempts (execution history)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="outcome")
    def outcome_badge(self, execution: JobExecution) -> SafeString:
        return badge(execution.outcome)

    @admin.display(description="started")
    def started(self, execution: JobExecution) -> str:
        return when(execution.started_at)

    @admin.display(description="finished")
    def finished(self, execution: JobExecution) -> str:
        return when(execution.finished_at)

    @admin.display(description="duration")
    def duration_ms(self, execution: JobExecution) -> str:
        return milliseconds(execution.duration)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "queue", "status_badge", "attempts_display", "run_at_s", "finished_at_s")
    list_filter = ("status", QueueFilter, NameFilter)
    list_per_page = 50  # each row costs the admin ~2 ms to draw
    search_fields = ("key",)  # and more: see get_search_results
    search_help_text = "A job id, a name or part of one, part of a key or of the last error."
    ordering = ("-id",)
    paginator = EstimatingPaginator
    # The job table can be large: skip the second COUNT(*) over all rows on filtered pages.
    show_full_result_count = False
    actions = ("retry", "cancel", "purge")
    inlines = (JobExecutionInline,)
    change_form_template = "admin/doctorjob/job/change_form.html"
    fieldsets = (
        (None, {"fields": ("name", "version", "queue", "status_badge", "priority", "key", "concurrency_key")}),
        ("Timing", {"fields": ("run_at_s", "created_at_s", "started_at_s", "finished_at_s")}),
        ("Attempts", {"fields": ("attempts", "max_attempts", "worker", "lease_id", "lease_expires_at_s")}),
        ("Payload and result", {"fields": ("payload_display", "result_display")}),
        ("Last error", {"fields": ("error_display", "traceback_display")}),
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> SafeString:
        return badge(job.status)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="run at", ordering="run_at")
    def run_at_s(self, job: Job) -> str:
        return when(job.run_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished_at_s(self, job: Job) -> str:
        return when(job.finished_at)

    @admin.display(description="created")
    def created_at_s(self, job: Job) -> str:
        return when(job.created_at)

    @admin.display(description="started")
    def started_at_s(self, job: Job) -> str:
        return when(job.started_at)

    @admin.display(description="lease expires")
    def lease_expires_at_s(self, job: Job) -> str:
        return when(job.lease_expires_at)

    @admin.display(description="payload")
    def payload_display(self, job: Job) -> str:
        return _pretty_json(job.payload)

    @admin.display(description="result")
    def result_display(self, job: Job) -> str:
        return "-" if job.result is None else _pretty_json(job.result)

    @admin.display(description="error")
    def error_display(self, job: Job) -> str:
        return _pre(job.error)

    @admin.display(description="traceback")
    def traceback_display(self, job: Job) -> str:
        return folded(job.traceback)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # Django's confirmation page lists every row: unusable at 100,000 jobs. Purge instead.
        actions.pop("delete_selected", None)
        return actions

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Search ids, the names of definitions, keys and the last error."""
        term = search_term.strip()
        if not term:
            return queryset, False
        matches = Q(key__icontains=term) | Q(error__icontains=term)
        names = defined_names(term)
        if names:
            matches |= Q(name__in=names)
        if term.isascii() and term.isdigit() and int(term) < 2**63:  # a bigint id
            matches |= Q(pk=int(term))
        return queryset.filter(matches), False

    def get_urls(self) -> list[Any]:
        def view(function: Any) -> Any:
            return self.admin_site.admin_view(lambda request, *args, **kwargs: function(self, request, *args, **kwargs))

        return [
            path("dashboard/", view(dashboard.dashboard_view), name="doctorjob_dashboard"),
            path("dashboard/resume/", view(dashboard.resume_view), name="doctorjob_dashboard_resume"),
            path(
                "<path:object_id>/retry/",
                view(JobAdmin.one_job_view),
                {"operation": "retry"},
                name="doctorjob_job_retry",
            ),
            path(
                "<path:object_id>/cancel/",
                view(JobAdmin.one_job_view),
                {"operation": "cancel"},
                name="doctorjob_job_cancel",
            ),
            *super().get_urls(),
        ]

    def one_job_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """The Retry and Cancel buttons of a job's page (POST, with the change permission)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        job = self.get_object(request, unquote(object_id))
        if job is None:
            raise Http404(f"There is no job with id {object_id!r}.")
        jobs = Job.objects.filter(pk=job.pk)
        result = operations.retry_matching(jobs) if operation == "retry" else operations.cancel_matching(jobs)
        done = "Queued job #{} to run now" if operation == "retry" else "Cancelled job #{}"
        _report(self, request, done.format(job.pk) if result.changed else f"Job #{job.pk} was left as it was", result)
        return HttpResponseRedirect(
            reverse("admin:doctorjob_job_change", args=[quote(job.pk)], current_app=self.admin_site.name)
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self._related(obj))
            if self.has_change_permission(request):
                context["can_retry"] = obj.status in (Status.DEAD, Status.CANCELLED)
                context["can_cancel"] = obj.status == Status.QUEUED
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def _related(self, job: Job) -> dict[str, Any]:
        """Links from a job's page: its definition, its worker, the dead letter it became and the
        one it was requeued from."""
        site = self.admin_site.name
        links = []
        definition = JobDefinition.objects.filter(name=job.name).values_list("pk", flat=True).first()
        if definition is not None:
            url = reverse("admin:doctorjob_jobdefinition_change", args=[definition], current_app=site)
            links.append(("definition", url, job.name))
        worker = Worker.objects.filter(name=job.worker).values_list("pk", flat=True).first() if job.worker else None
        if worker is not None:
            links.append(
                ("worker", reverse("admin:doctorjob_worker_change", args=[worker], current_app=site), job.worker)
            )
        for letter in DeadLetter.objects.filter(job_id=job.pk).values_list("pk", flat=True):
            url = reverse("admin:doctorjob_deadletter_change", args=[letter], current_app=site)
            links.append(("became dead letter", url, f"#{letter}"))
        for letter in DeadLetter.objects.filter(requeued_job_id=job.pk).values_list("pk", flat=True):
            url = reverse("admin:doctorjob_deadletter_change", args=[letter], current_app=site)
            links.append(("requeued from dead letter", url, f"#{letter}"))
        return {"job_links": links}

    @admin.action(permissions=["change"], description="Retry selected jobs (dead or cancelled)")
    def retry(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Queue the selected dead or cancelled jobs to run now."""
        result = operations.retry_matching(queryset)
        _report(self, request, f"Queued {_plural(result.changed, 'job')} to run now", result)

    @admin.action(permissions=["change"], description="Cancel selected queued jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Cancel the selected queued jobs so they never run."""
        result = operations.cancel_matching(queryset)
        _report(self, request, f"Cancelled {_plural(result.changed, 'job')}", result)

    @admin.action(permissions=["delete"], description="Purge selected jobs (not running) and their history")
    def purge(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Delete the selected jobs, except running ones, with their execution history."""
        result = operations.purge_matching(queryset)
        _report(self, request, f"Purged {_plural(result.changed, 'job')}", result)


class RequeuedFilter(admin.SimpleListFilter):
    title = "requeued"
    parameter_name = "requeued"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("no", "Not yet"), ("yes", "Yes")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("no", "yes"):
            return queryset.filter(requeued_at__isnull=self.value() == "no")
        return queryset


class RequeueForm(forms.Form):
    """The payload of a dead letter as JSON text, which the user may correct before requeueing."""

    payload = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "class": "vLargeTextField"}),
        help_text="JSON. Correct it if needed: it is checked like enqueue() checks it before the job is written.",
    )

    def __init__(self, *args: Any, dead_letter: DeadLetter, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"payload": json.dumps(dead_letter.payload, indent=2, ensure_ascii=False)})
        super().__init__(*args, **kwargs)

    def clean_payload(self) -> Any:
        try:
            payload = json.loads(self.cleaned_data["payload"])
        except ValueError as exc:
            raise forms.ValidationError(f"Enter valid JSON: {exc}.", code="invalid_json") from exc
        # enqueue() treats a null payload as {}; requeue() would read None as "keep the old one".
        return {} if payload is None else payload


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "name",
        "queue",
        "attempts",
        "error_summary",
        "created_at_s",
        "requeued_job_link",
    )
    list_filter = (RequeuedFilter, QueueFilter, NameFilter)
    list_per_page = 50
    search_fields = ("name", "error")
    ordering = ("-id",)
    paginator = EstimatingPaginator
    show_full_result_count = False
    actions = ("requeue",)
    change_form_template = "admin/doctorjob/deadletter/change_form.html"
    requeue_template = "admin/doctorjob/deadletter/requeue.html"
    fieldsets = (
        (
            None,
            {"fields": ("name", "queue", "priority", ("attempts", "max_attempts"), "key", "job_link", "created_at_s")},
        ),
        ("Error", {"fields": ("error_display", "traceback_display")}),
        ("Payload", {"fields": ("payload_display",)}),
        ("Requeued", {"fields": ("requeued_at_s", "requeued_job_link")}),
    )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # dead letters are kept; a requeue marks them
        return actions

    @admin.display(description="dead since", ordering="created_at")
    def created_at_s(self, letter: DeadLetter) -> str:
        return when(letter.created_at)

    @admin.display(description="requeued at", ordering="requeued_at")
    def requeued_at_s(self, letter: DeadLetter) -> str:
        return when(letter.requeued_at)

    @admin.display(description="job")
    def job_link(self, letter: DeadLetter) -> str:
        if letter.job_id is None:
            return "- (pruned)"
        url = reverse("admin:doctorjob_job_change", args=[letter.job_id], current_app=self.admin_site.name)
        return format_html('<a href="{}">job #{}</a>', url, letter.job_id)

    @admin.display(description="error")
    def error_summary(self, letter: DeadLetter) -> str:
        first_line = letter.error.strip().partition("\n")[0]
        return Truncator(first_line).chars(120)

    @admin.display(description="error")
    def error_display(self, letter: DeadLetter) -> str:
        return _pre(letter.error)

    @admin.display(description="traceback")
    def traceback_display(self, letter: DeadLetter) -> str:
        return folded(letter.traceback)

    @admin.display(description="payload")
    def payload_display(self, letter: DeadLetter) -> str:
        return _pretty_json(letter.payload)

    @admin.display(description="requeued as", ordering="requeued_job")
    def requeued_job_link(self, letter: DeadLetter) -> str:
        if letter.requeued_job_id is None:
            return "-"
        url = reverse("admin:doctorjob_job_change", args=[letter.requeued_job_id], current_app=self.admin_site.name)
        return format_html('<a href="{}">job #{}</a>', url, letter.requeued_job_id)

    def has_requeue_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        """Requeueing needs the requeue permission and the view permission, not change."""
        codename = get_permission_codename("requeue", self.opts)
        return self.has_view_permission(request, obj) and request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/requeue/",
                self.admin_site.admin_view(self.requeue_view),
                name="{}_{}_requeue".format(*info),
            ),
            *super().get_urls(),
        ]

    @admin.action(permissions=["requeue"], description="Requeue selected dead letters")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        """Requeue each selected dead letter with its payload as a fresh job, a chunk per transaction."""
        result = operations.requeue_matching(queryset)
        _report(self, request, f"Requeued {_plural(result.changed, 'dead letter')} as new jobs", result, "dead letter")

    def requeue_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Requeue one dead letter, with the payload as corrected in the detail page's form."""
        letter = self.get_object(request, unquote(object_id))
        if not self.has_requeue_permission(request, letter):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if letter is None:
            raise Http404(f"There is no dead letter with id {object_id!r}.")
        change_url = reverse(
            "admin:doctorjob_deadletter_change", args=[quote(letter.pk)], current_app=self.admin_site.name
        )
        if letter.requeued_at is not None:
            self.message_user(request, self._already_requeued(letter), messages.ERROR)
            return HttpResponseRedirect(change_url)
        form = RequeueForm(request.POST, dead_letter=letter)
        if form.is_valid():
            try:
                job = operations.requeue(letter, form.cleaned_data["payload"])
            except InvalidPayload as exc:
                form.add_error("payload", str(exc))
            except DoctorJobError as exc:
                form.add_error(None, str(exc))
            else:
                self.log_change(request, letter, f"Requeued as job #{job.pk}.")
                job_url = reverse("admin:doctorjob_job_change", args=[job.pk], current_app=self.admin_site.name)
                self.message_user(
                    request,
                    format_html('Requeued dead letter #{} as <a href="{}">job #{}</a>.', letter.pk, job_url, job.pk),
                )
                return HttpResponseRedirect(change_url)
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            self.requeue_template,
            {
                **self.admin_site.each_context(request),
                "title": f"Requeue {letter}",
                "opts": self.opts,
                "original": letter,
                "has_view_permission": True,
                "requeue_form": form,
                "requeue_url": request.path,
            },
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and self.has_requeue_permission(request, obj):
            if obj.requeued_at is None:
                context["requeue_form"] = RequeueForm(dead_letter=obj)
                context["requeue_url"] = reverse(
                    "admin:doctorjob_deadletter_requeue", args=[quote(obj.pk)], current_app=self.admin_site.name
                )
            else:
                context["requeue_refusal"] = self._already_requeued(obj)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    @staticmethod
    def _already_requeued(letter: DeadLetter) -> str:
        return (
            f"Dead letter #{letter.pk} was already requeued (as job #{letter.requeued_job_id}); "
            "it cannot be requeued again."
        )


class JobVersionInline(_TabularInline):
    model = JobVersion
    fields = readonly_fields = ("number", "first_seen", "schedule", "options", "payload")
    ordering = ("-number",)
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JobDefinition)
class JobDefinitionAdmin(ReadOnlyAdmin):
    """Jobs the code declares (kept in sync by workers and ``sync_jobs``): run now, pause, resume."""

    list_display = ("name", "queue", "version", "min_version", "schedule", "paused", "retired", "updated_at")
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
                    "scheduled_since",
                    "last_tick",
                    "paused",
                    "retired",
                    "options",
                    "payload",
                    "created_at",
                    "updated_at",
                )
            },
        ),
        ("Runs", {"fields": ("jobs_link", "last_run", "success_rate")}),
    )

    @admin.display(description="jobs")
    def jobs_link(self, definition: JobDefinition) -> str:
        url = reverse("admin:doctorjob_job_changelist", current_app=self.admin_site.name)
        return format_html('<a href="{}?name={}">its jobs</a>', url, definition.name)

    @admin.display(description="last run")
    def last_run(self, definition: JobDefinition) -> str:
        """When its latest job started, found through the job table's primary key."""
        started = (
            Job.objects.filter(name=definition.name, started_at__isnull=False)
            .order_by("-id")
            .values_list("started_at", flat=True)
            .first()
        )
        return when(started)

    @admin.display(description="success rate (last 1,000 attempts)")
    def success_rate(self, definition: JobDefinition) -> str:
        recent = (
            JobExecution.objects.filter(job__name=definition.name)
            .order_by("-job_id")
            .values_list("outcome", flat=True)[:1000]
        )
        outcomes = list(recent)
        if not outcomes:
            return "-"
        succeeded = sum(outcome == Outcome.SUCCEEDED for outcome in outcomes)
        return f"{100 * succeeded / len(outcomes):.1f}% of {len(outcomes):,}"

    def has_run_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.run_jobdefinition") and self.has_view_permission(request)

    @admin.action(permissions=["run"], description="Run selected jobs now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        from .operations import run_now

        done, failed = [], []
        for definition in queryset.filter(retired=False):
            try:
                done.append(run_now(definition.name))
            except DoctorJobError as exc:
                failed.append(f"{definition.name}: {exc}")
        if done:
            self.message_user(
                request,
                f"Enqueued {_plural(len(done), 'job')}: " + ", ".join(f"#{j.pk} {j.name}" for j in done) + ".",
                messages.SUCCESS,
            )
        for problem in failed:
            self.message_user(request, problem, messages.ERROR)

    @admin.action(permissions=["change"], description="Pause selected jobs")
    def pause(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        count = queryset.update(paused=True)
        self.message_user(request, f"Paused {_plural(count, 'job')}: workers will not claim them.")

    @admin.action(permissions=["change"], description="Resume selected jobs")
    def resume(self, request: HttpRequest, queryset: QuerySet[JobDefinition]) -> None:
        count = queryset.update(paused=False)
        self.message_user(request, f"Resumed {_plural(count, 'job')}.")


@admin.register(QueueState)
class QueueStateAdmin(ReadOnlyAdmin):
    """Queues known to the code; pausing one stops every worker claiming from it."""

    list_display = ("name", "paused", "updated_at")
    list_filter = ("paused",)
    ordering = ("name",)
    actions = ("pause", "resume")
    fields = ("name", "paused", "updated_at")

    @admin.action(permissions=["change"], description="Pause selected queues")
    def pause(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        count = queryset.update(paused=True)
        self.message_user(request, f"Paused {_plural(count, 'queue')}: workers will not claim from them.")

    @admin.action(permissions=["change"], description="Resume selected queues")
    def resume(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        count = queryset.update(paused=False)
        self.message_user(request, f"Resumed {_plural(count, 'queue')}.")


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ("name", "queues_display", "concurrency", "started", "heartbeat", "last_claim", "lost")
    list_filter = ("lost", "host")
    ordering = ("-started_at",)
    fields = (
        *("name", "host", "pid", "queues_display", "concurrency", "lease"),
        *("started", "heartbeat", "last_claim", "lost"),
    )

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
