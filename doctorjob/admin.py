"""A read-only admin for jobs and dead letters whose state changes are explicit POST actions:
retry and cancel jobs, requeue dead letters (optionally with a corrected payload)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from . import operations
from .exceptions import DoctorJobError, InvalidPayload
from .models import DeadLetter, Job, JobDefinition, JobExecution, JobVersion, QueueState, Worker


def _pre(text: str) -> str:
    return format_html("<pre>{}</pre>", text) if text else "-"


def _pretty_json(value: Any) -> str:
    return _pre(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
    fields = readonly_fields = ("attempt", "outcome", "worker", "started_at", "finished_at", "duration", "error")
    ordering = ("attempt", "id")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "queue", "status", "attempts_display", "priority", "run_at", "finished_at")
    list_filter = ("status", "queue", "name")
    search_fields = ("key",)
    ordering = ("-id",)
    # The job table can be large: skip the second COUNT(*) over all rows on filtered pages.
    show_full_result_count = False
    actions = ("retry", "cancel")
    inlines = (JobExecutionInline,)
    fieldsets = (
        (None, {"fields": ("name", "version", "queue", "status", "priority", "key", "concurrency_key")}),
        ("Timing", {"fields": ("run_at", "created_at", "started_at", "finished_at", "relayed_at")}),
        ("Attempts", {"fields": ("attempts", "max_attempts", "worker", "lease_id", "lease_expires_at")}),
        ("Payload and result", {"fields": ("payload_display", "result_display", "progress_display")}),
        ("Job tree", {"fields": ("parent_display", "on_failure", "pending_children", "children_display")}),
        ("Last error", {"fields": ("error_display", "traceback_display")}),
    )
    CHILDREN_SHOWN = 50

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="payload")
    def payload_display(self, job: Job) -> str:
        return _pretty_json(job.payload)

    @admin.display(description="result")
    def result_display(self, job: Job) -> str:
        return "-" if job.result is None else _pretty_json(job.result)

    @admin.display(description="progress")
    def progress_display(self, job: Job) -> str:
        return "-" if job.progress is None else _pretty_json(job.progress)

    @admin.display(description="parent")
    def parent_display(self, job: Job) -> str:
        if job.parent_id is None:
            return "-"
        parent = Job.objects.using(job._state.db).filter(pk=job.parent_id).only("name", "status").first()
        if parent is None:
            return f"#{job.parent_id} (deleted)"
        return format_html('<a href="{}">{}</a> ({})', self._change_url(parent), parent, parent.status)

    @admin.display(description="children")
    def children_display(self, job: Job) -> str:
        children = Job.objects.using(job._state.db).filter(parent_id=job.pk).order_by("id").only("name", "status")
        shown = list(children[: self.CHILDREN_SHOWN + 1])
        if not shown:
            return "-"
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> ({})</li>',
            ((self._change_url(c), c, c.status) for c in shown[: self.CHILDREN_SHOWN]),
        )
        if len(shown) > self.CHILDREN_SHOWN:
            url = reverse("admin:doctorjob_job_changelist") + f"?parent__id__exact={job.pk}"
            items += format_html('<li><a href="{}">all children…</a></li>', url)
        return format_html("<ul>{}</ul>", items)

    @staticmethod
    def _change_url(job: Job) -> str:
        return reverse("admin:doctorjob_job_change", args=[quote(job.pk)])

    @admin.display(description="error")
    def error_display(self, job: Job) -> str:
        return _pre(job.error)

    @admin.display(description="traceback")
    def traceback_display(self, job: Job) -> str:
        return _pre(job.traceback)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Search keys, and ids when the term is a number."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term.isascii() and term.isdigit() and int(term) < 2**63:  # a bigint id
            results |= queryset.filter(pk=int(term))
        return results, may_have_duplicates

    @admin.action(permissions=["change"], description="Retry selected jobs")
    def retry(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Queue the selected dead or cancelled jobs to run now."""
        selected = list(queryset.only("pk"))
        retried = operations.retry(selected)
        self._report(
            request,
            f"Queued {_plural(retried, 'job')} to run now",
            retried,
            skipped=len(selected) - retried,
            because="not dead or cancelled, or whose dead letter was already requeued",
        )

    @admin.action(permissions=["change"], description="Cancel selected queued or waiting jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Cancel the selected queued or waiting jobs so they never run."""
        selected = list(queryset.only("pk"))
        cancelled = operations.cancel(selected)
        self._report(
            request,
            f"Cancelled {_plural(cancelled, 'job')}",
            cancelled,
            skipped=len(selected) - cancelled,
            because="not queued or waiting",
        )

    def _report(self, request: HttpRequest, message: str, changed: int, *, skipped: int, because: str) -> None:
        if skipped:
            message += f"; skipped {_plural(skipped, 'job')} that were {because}"
        self.message_user(request, message + ".", messages.SUCCESS if changed else messages.WARNING)


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
        "created_at",
        "requeued_at",
        "requeued_job_link",
    )
    list_filter = (RequeuedFilter, "queue", "name")
    search_fields = ("name", "error")
    ordering = ("-id",)
    actions = ("requeue",)
    change_form_template = "admin/doctorjob/deadletter/change_form.html"
    requeue_template = "admin/doctorjob/deadletter/requeue.html"
    fieldsets = (
        (None, {"fields": ("name", "queue", "priority", ("attempts", "max_attempts"), "key", "job", "created_at")}),
        ("Error", {"fields": ("error_display", "traceback_display")}),
        ("Payload", {"fields": ("payload_display",)}),
        ("Requeued", {"fields": ("requeued_at", "requeued_job")}),
    )

    @admin.display(description="error")
    def error_summary(self, letter: DeadLetter) -> str:
        first_line = letter.error.strip().partition("\n")[0]
        return Truncator(first_line).chars(120)

    @admin.display(description="error")
    def error_display(self, letter: DeadLetter) -> str:
        return _pre(letter.error)

    @admin.display(description="traceback")
    def traceback_display(self, letter: DeadLetter) -> str:
        return _pre(letter.traceback)

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
        """Requeue each selected dead letter with its payload as a fresh job, one transaction each."""
        letters = list(queryset.only("pk", "name", "requeued_at"))  # requeue() reads the rest under a lock
        requeued = 0
        for letter in letters:
            if letter.requeued_at is not None:
                continue
            try:
                job = operations.requeue(letter)
            except DoctorJobError as exc:
                self.message_user(request, f"Dead letter #{letter.pk} was not requeued: {exc}", messages.ERROR)
            else:
                requeued += 1
                self.log_change(request, letter, f"Requeued as job #{job.pk}.")
        message = f"Requeued {_plural(requeued, 'dead letter')} as new jobs"
        already = sum(letter.requeued_at is not None for letter in letters)
        if already:
            message += f"; skipped {_plural(already, 'dead letter')} already requeued"
        self.message_user(request, message + ".", messages.SUCCESS if requeued else messages.WARNING)

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
    )

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
    list_display = ("name", "host", "pid", "queues", "concurrency", "started_at", "last_heartbeat", "lost")
    list_filter = ("lost", "host")
    ordering = ("-started_at",)
    fields = list_display + ("lease",)
