"""Metrics in Prometheus' text format, from a view users mount in their URLconf:

    from doctorjob.metrics import metrics_view
    urlpatterns += [path("metrics/doctorjob", metrics_view)]

It needs the ``metrics`` extra (``prometheus_client``). Every scrape reads the database with
the dashboard's bounded queries (``stats``) and the running totals (``totals``), so any number
of web processes report the same figures. A request passes with
``Authorization: Bearer <DOCTORJOB['METRICS_TOKEN']>`` or from a logged-in user with the
``doctorjob.view_job`` permission.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import stats, totals
from .conf import settings


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.has_perm("doctorjob.view_job"))


class Collector:
    """Reads the figures at each scrape (prometheus_client's custom collector protocol)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = timezone.now()
        jobs = GaugeMetricFamily(
            "doctorjob_jobs",
            "Jobs by status (queued and running counted; the others estimated on a big PostgreSQL table).",
            labels=["status"],
        )
        for status, counted in stats.status_counts().items():
            jobs.add_metric([status], counted.value)
        yield jobs
        queued = GaugeMetricFamily(
            "doctorjob_queue_jobs", "Jobs in flight by queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "doctorjob_queue_oldest_runnable_seconds",
            "Age of the oldest runnable job of each queue (0 when none is waiting).",
            labels=["queue"],
        )
        paused = GaugeMetricFamily("doctorjob_queue_paused", "1 when the queue is paused.", labels=["queue"])
        for queue in stats.queue_summaries(now=now):
            queued.add_metric([queue.name, "runnable"], queue.runnable)
            queued.add_metric([queue.name, "scheduled"], queue.scheduled)
            queued.add_metric([queue.name, "running"], queue.running)
            age = queue.oldest_age(now)
            oldest.add_metric([queue.name], age.total_seconds() if age else 0.0)
            paused.add_metric([queue.name], 1 if queue.paused else 0)
        yield from (queued, oldest, paused)
        attempts = CounterMetricFamily(
            "doctorjob_attempts",
            "Attempts finished, by queue and outcome (failed: raised; lost: the worker died or its lease ran out).",
            labels=["queue", "outcome"],
        )
        dead = CounterMetricFamily("doctorjob_dead_letters", "Jobs that failed for good, by queue.", labels=["queue"])
        for total in totals.totals():
            if total.outcome == totals.DEAD:
                dead.add_metric([total.queue], total.total)
            else:
                attempts.add_metric([total.queue, total.outcome], total.total)
        yield from (attempts, dead)
        workers = GaugeMetricFamily("doctorjob_workers", "Worker processes by state.", labels=["state"])
        summaries = stats.worker_summaries()
        workers.add_metric(["alive"], sum(not s.worker.lost and not s.stale(now) for s in summaries))
        workers.add_metric(["late"], sum(not s.worker.lost and s.stale(now) for s in summaries))
        workers.add_metric(["lost"], sum(s.worker.lost for s in summaries))
        yield workers


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format; 403 without the token or the permission."""
    if not _allowed(request):
        return HttpResponse(
            "Metrics need DOCTORJOB['METRICS_TOKEN'] as a bearer token, or a user with doctorjob.view_job.\n",
            status=403,
            content_type="text/plain",
        )
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
    except ImportError as exc:
        raise ImproperlyConfigured(
            'doctorjob\'s metrics need prometheus_client: pip install "doctorjob[metrics]"'
        ) from exc

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
