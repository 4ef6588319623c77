"""Dead letters: requeue one with a corrected payload (the panel on its page), or every one a
filter matches."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from .. import operations
from ..exceptions import DoctorJobError, InvalidPayload
from ..models import DeadLetter
from .base import ReadOnlyAdmin, plural, report
from .changelists import EstimatingPaginator, NameFilter, QueueFilter
from .display import folded, pre, pretty_json, when


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
    without_actions = ("delete_selected",)  # dead letters are kept; a requeue marks them
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
        return pre(letter.error)

    @admin.display(description="traceback")
    def traceback_display(self, letter: DeadLetter) -> str:
        return folded(letter.traceback)

    @admin.display(description="payload")
    def payload_display(self, letter: DeadLetter) -> str:
        return pretty_json(letter.payload)

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
        report(self, request, f"Requeued {plural(result.changed, 'dead letter')} as new jobs", result, "dead letter")

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
