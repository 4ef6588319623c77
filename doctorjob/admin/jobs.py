"""Jobs: the list (estimated counts, filters from the definitions, search by name, key and
error), a job's page (its attempts, links, Retry and Cancel) and the bulk actions, and the
dashboard's URLs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .. import operations
from ..models import DeadLetter, Job, JobDefinition, JobExecution, Status, Worker
from . import dashboard
from .base import ReadOnlyAdmin, _TabularInline, plural, report
from .changelists import EstimatingPaginator, NameFilter, QueueFilter, defined_names
from .display import badge, folded, milliseconds, pre, pretty_json, when


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
    # Django's confirmation page lists every row: unusable at 100,000 jobs. Purge instead.
    without_actions = ("delete_selected",)
    inlines = (JobExecutionInline,)
    change_form_template = "admin/doctorjob/job/change_form.html"
    fieldsets = (
        (None, {"fields": ("name", "version", "queue", "status_badge", "priority", "key", "concurrency_key")}),
        ("Timing", {"fields": ("run_at_s", "created_at_s", "started_at_s", "finished_at_s", "relayed_at_s")}),
        ("Attempts", {"fields": ("attempts", "max_attempts", "worker", "lease_id", "lease_expires_at_s")}),
        ("Payload and result", {"fields": ("payload_display", "result_display", "progress_display")}),
        ("Job tree", {"fields": ("parent_display", "on_failure", "pending_children", "children_display")}),
        ("Last error", {"fields": ("error_display", "traceback_display")}),
    )
    CHILDREN_SHOWN = 50  # on a parent's page; a link lists them all

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A running job is its worker's until it finishes: Delete leaves it alone, as Purge does."""
        return super().has_delete_permission(request, obj) and (obj is None or obj.status != Status.RUNNING)

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        """Delete as Purge does: an unfinished child counts as finished for its waiting parent,
        which would otherwise wait for it for ever."""
        operations.purge_matching(Job.objects.using(obj._state.db).filter(pk=obj.pk))

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The job tree's fields only on the page of a parent or a child."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.parent_id is None and obj.pending_children is None:
            fieldsets = [f for f in fieldsets if f[0] != "Job tree"]
        return fieldsets

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
        return pretty_json(job.payload)

    @admin.display(description="result")
    def result_display(self, job: Job) -> str:
        return "-" if job.result is None else pretty_json(job.result)

    @admin.display(description="relayed at")
    def relayed_at_s(self, job: Job) -> str:
        return when(job.relayed_at)

    @admin.display(description="progress")
    def progress_display(self, job: Job) -> str:
        return "-" if job.progress is None else pretty_json(job.progress)

    @admin.display(description="parent")
    def parent_display(self, job: Job) -> str:
        if job.parent_id is None:
            return "-"
        parent = Job.objects.using(job._state.db).filter(pk=job.parent_id).only("name", "status").first()
        if parent is None:
            return f"#{job.parent_id} (deleted)"
        return format_html('<a href="{}">{}</a> {}', _change_url(parent), parent, badge(parent.status))

    @admin.display(description="children")
    def children_display(self, job: Job) -> str:
        children = Job.objects.using(job._state.db).filter(parent_id=job.pk).order_by("id").only("name", "status")
        shown = list(children[: self.CHILDREN_SHOWN + 1])
        if not shown:
            return "-"
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> {}</li>',
            ((_change_url(c), c, badge(c.status)) for c in shown[: self.CHILDREN_SHOWN]),
        )
        if len(shown) > self.CHILDREN_SHOWN:
            url = reverse("admin:doctorjob_job_changelist") + f"?parent__id__exact={job.pk}"
            items += format_html('<li><a href="{}">all children…</a></li>', url)
        return format_html('<ul class="dj-children">{}</ul>', items)

    @admin.display(description="error")
    def error_display(self, job: Job) -> str:
        return pre(job.error)

    @admin.display(description="traceback")
    def traceback_display(self, job: Job) -> str:
        return folded(job.traceback)

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
        report(self, request, done.format(job.pk) if result.changed else f"Job #{job.pk} was left as it was", result)
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
                context["can_cancel"] = obj.status in (Status.QUEUED, Status.WAITING)
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
        report(self, request, f"Queued {plural(result.changed, 'job')} to run now", result)

    @admin.action(permissions=["change"], description="Cancel selected queued or waiting jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Cancel the selected queued or waiting jobs so they never run."""
        result = operations.cancel_matching(queryset)
        report(self, request, f"Cancelled {plural(result.changed, 'job')}", result)

    @admin.action(permissions=["delete"], description="Purge selected jobs (not running) and their history")
    def purge(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """Delete the selected jobs, except running ones, with their execution history."""
        result = operations.purge_matching(queryset)
        report(self, request, f"Purged {plural(result.changed, 'job')}", result)


def _change_url(job: Job) -> str:
    return reverse("admin:doctorjob_job_change", args=[quote(job.pk)])
