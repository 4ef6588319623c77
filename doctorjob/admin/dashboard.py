"""The admin's dashboard: jobs by status and queue, attempts a minute over the last hour, the
oldest runnable job of each queue, workers and what they run, paused queues and definitions
with their Resume buttons. Rendered by the server: the chart is inline SVG, no script.

JobAdmin mounts it at ``<admin>/doctorjob/job/dashboard/`` (``admin:doctorjob_dashboard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from .. import operations, stats
from ..models import Job, JobDefinition, QueueState
from . import display

# The chart's drawing area, in SVG user units (the SVG scales to its box).
WIDTH, HEIGHT, LEFT, BOTTOM = 720, 200, 44, 22
SERIES = (("succeeded", "succeeded"), ("failed", "failed (retried or dead)"), ("dead", "dead-lettered"))


@dataclass(frozen=True)
class Bar:
    series: str
    x: float
    y: float
    width: float
    height: float
    title: str


def chart(minutes: list[stats.Minute]) -> dict[str, Any]:
    """Geometry of the stacked bars (succeeded under failed) and the dead-letter line, per minute."""
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM
    top = max([m.succeeded + m.failed for m in minutes] + [m.dead for m in minutes] + [1])
    scale = plot_h / top
    step = plot_w / max(len(minutes), 1)
    bars: list[Bar] = []
    dead_points = []
    for i, m in enumerate(minutes):
        x = LEFT + i * step
        label = display.when(m.at)[11:16]
        base = float(plot_h)
        for series, value in (("succeeded", m.succeeded), ("failed", m.failed)):
            if value:
                h = value * scale
                base -= h
                bars.append(Bar(series, x + 1, base, max(step - 2, 1), h, f"{label}: {value} {series}"))
        dead_points.append(f"{x + step / 2:.1f},{plot_h - m.dead * scale:.1f}")
    ticks = [
        {"x": LEFT + i * step, "label": display.when(minutes[i].at)[11:16]}
        for i in range(0, len(minutes), 10)
        if minutes
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "plot_h": plot_h,
        "top": top,
        "bars": bars,
        "dead_points": " ".join(dead_points),
        "ticks": ticks,
        "series": SERIES,
        "totals": {
            "succeeded": sum(m.succeeded for m in minutes),
            "failed": sum(m.failed for m in minutes),
            "dead": sum(m.dead for m in minutes),
        },
    }


def dashboard_view(model_admin: admin.ModelAdmin[Job], request: HttpRequest) -> HttpResponse:
    """The dashboard page (GET only), for users who may view jobs."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    now = timezone.now()
    queues = stats.queue_summaries(now=now)
    workers = stats.worker_summaries()
    paused_queues, paused_definitions = stats.paused()
    site = model_admin.admin_site
    user = request.user
    context = {
        **site.each_context(request),
        "title": "Jobs dashboard",
        "opts": model_admin.opts,
        "now": now,
        "zone": display.zone(),
        "statuses": stats.status_counts(),
        "queues": [(q, display.age(q.oldest_age(now))) for q in queues],
        "workers": [(w, w.stale(now), display.when(w.worker.last_heartbeat)) for w in workers],
        "chart": chart(stats.throughput(now=now)),
        "paused_queues": paused_queues,
        "paused_definitions": paused_definitions,
        "can_resume_queues": user.has_perm("doctorjob.change_queuestate"),
        "can_resume_definitions": user.has_perm("doctorjob.change_jobdefinition"),
        "resume_url": reverse("admin:doctorjob_dashboard_resume", current_app=site.name),
        "changelist_url": reverse("admin:doctorjob_job_changelist", current_app=site.name),
    }
    request.current_app = site.name
    return TemplateResponse(request, "admin/doctorjob/dashboard.html", context)


def resume_view(model_admin: admin.ModelAdmin[Job], request: HttpRequest) -> HttpResponse:
    """Resume a paused queue or definition from the dashboard (POST, with the change permission)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    kind, name = request.POST.get("kind", ""), request.POST.get("name", "")
    models: dict[str, type[QueueState] | type[JobDefinition]] = {"queue": QueueState, "definition": JobDefinition}
    model = models.get(kind)
    if model is None:
        return HttpResponse("kind must be 'queue' or 'definition'.", status=400, content_type="text/plain")
    if not request.user.has_perm(f"doctorjob.change_{model._meta.model_name}"):
        raise PermissionDenied
    label = "queue" if model is QueueState else "job"
    if operations.set_paused(model, name, False):
        model_admin.message_user(request, f"Resumed {label} {name}: workers claim from it again.", messages.SUCCESS)
    else:
        model_admin.message_user(request, f"There is no {label} named {name!r}; nothing was resumed.", messages.ERROR)
    return HttpResponseRedirect(reverse("admin:doctorjob_dashboard", current_app=model_admin.admin_site.name))
