"""What the dashboard, the metrics and ``check_workers`` read: bounded queries on the indexes.

The job table may hold millions of rows. Nothing here counts all of them: queued and running
jobs are read through the claim's and the lease sweep's partial indexes (the work in flight),
and on a big PostgreSQL table the other statuses come from the planner's statistics
(``pg_class.reltuples`` and ``pg_stats``), marked as estimates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, router
from django.db.models import Count, Min, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from .models import DeadLetter, Job, JobDefinition, JobExecution, Outcome, QueueState, Status, Worker

# Below this many rows (the planner's figure) counting exactly is cheap enough.
EXACT_BELOW = 100_000
# The running jobs listed per worker on the dashboard, at most.
RUNNING_SHOWN = 200


@dataclass(frozen=True)
class Counted:
    """A number of rows, and whether it is the planner's estimate rather than a count."""

    value: int
    estimate: bool = False


@dataclass
class QueueSummary:
    """One queue: its runnable and scheduled jobs, running jobs, and how long the oldest waits."""

    name: str
    runnable: int = 0
    scheduled: int = 0
    running: int = 0
    oldest_runnable: datetime | None = None
    paused: bool = False

    def oldest_age(self, now: datetime) -> timedelta | None:
        return None if self.oldest_runnable is None else max(now - self.oldest_runnable, timedelta(0))


@dataclass
class WorkerSummary:
    """A worker row and the jobs it is running now."""

    worker: Worker
    running: list[tuple[int, str]] = field(default_factory=list)

    def stale(self, now: datetime) -> bool:
        """True when its heartbeat is older than its lease: it may be stuck or gone."""
        return now - self.worker.last_heartbeat > timedelta(seconds=self.worker.lease)


def _alias(using: str | None) -> str:
    return using or router.db_for_read(Job)


def estimated_rows(model: type[Any], using: str | None = None) -> int | None:
    """The planner's row count of ``model``'s table (PostgreSQL, once analysed), else None."""
    connection = connections[_alias(using)]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [model._meta.db_table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def status_counts(using: str | None = None) -> dict[str, Counted]:
    """Jobs by status: exact on a small table; on a big one queued and running are counted
    through their partial indexes and the rest estimated from ``pg_stats``."""
    alias = _alias(using)
    jobs = Job.objects.using(alias)
    total = estimated_rows(Job, alias)
    if total is None or total < EXACT_BELOW:
        exact = dict(jobs.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
        return {status: Counted(exact.get(status, 0)) for status in Status.values}
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
            "WHERE schemaname = current_schema() AND tablename = %s AND attname = 'status'",
            [Job._meta.db_table],
        )
        row = cursor.fetchone()
    frequencies = dict(zip(row[0], row[1])) if row and row[0] else {}
    counts = {status: Counted(round(frequencies.get(status, 0.0) * total), estimate=True) for status in Status.values}
    for status in (Status.QUEUED, Status.RUNNING):
        counts[status] = Counted(jobs.filter(status=status).count())
    return counts


def queue_summaries(using: str | None = None, now: datetime | None = None) -> list[QueueSummary]:
    """Every queue known to the definitions, the pauses or the jobs in flight, by name."""
    alias, now = _alias(using), now or timezone.now()
    queues: dict[str, QueueSummary] = {}

    def queue(name: str) -> QueueSummary:
        return queues.setdefault(name, QueueSummary(name))

    for name in JobDefinition.objects.using(alias).filter(retired=False).values_list("queue", flat=True):
        queue(name)
    for name, paused in QueueState.objects.using(alias).values_list("name", "paused"):
        queue(name).paused = paused
    waiting = (
        Job.objects.using(alias)
        .filter(status=Status.QUEUED)
        .values("queue")
        .annotate(
            runnable=Count("pk", filter=Q(run_at__lte=now)),
            scheduled=Count("pk", filter=Q(run_at__gt=now)),
            oldest=Min("run_at", filter=Q(run_at__lte=now)),
        )
    )
    for row in waiting:
        summary = queue(row["queue"])
        summary.runnable, summary.scheduled, summary.oldest_runnable = row["runnable"], row["scheduled"], row["oldest"]
    running = Job.objects.using(alias).filter(status=Status.RUNNING).values_list("queue").annotate(n=Count("pk"))
    for name, count in running.values_list("queue", "n"):
        queue(name).running = count
    return sorted(queues.values(), key=lambda q: q.name)


def worker_summaries(using: str | None = None) -> list[WorkerSummary]:
    """Workers, live ones first, each with (up to RUNNING_SHOWN in all) the jobs it runs."""
    alias = _alias(using)
    workers = {w.name: WorkerSummary(w) for w in Worker.objects.using(alias).order_by("lost", "-last_heartbeat")}
    running = (
        Job.objects.using(alias)
        .filter(status=Status.RUNNING)
        .order_by("id")
        .values_list("worker", "id", "name")[:RUNNING_SHOWN]
    )
    for worker, pk, name in running:
        if worker in workers:
            workers[worker].running.append((pk, name))
    return list(workers.values())


@dataclass(frozen=True)
class Minute:
    """Attempts finished in one minute: succeeded, failed (retried or dead), and dead letters."""

    at: datetime
    succeeded: int = 0
    failed: int = 0
    dead: int = 0


def throughput(using: str | None = None, now: datetime | None = None, minutes: int = 60) -> list[Minute]:
    """Attempts finished per minute over the last ``minutes``, oldest first, one entry a minute.

    Succeeded and failed attempts come from the execution history ("failed" counts attempts
    that raised or whose worker was lost), dead jobs from the dead letters written each minute.
    """
    alias, now = _alias(using), now or timezone.now()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    buckets: dict[datetime, dict[str, int]] = {start + timedelta(minutes=m): {} for m in range(minutes)}

    def add(rows: Iterable[Any], series: Any) -> None:
        for row in rows:
            counts = buckets.get(row["minute"])  # aware datetimes: equal instants hash alike
            if counts is not None:
                key = series(row)
                counts[key] = counts.get(key, 0) + row["n"]

    executions = (
        JobExecution.objects.using(alias)
        .filter(finished_at__gte=start, finished_at__lt=end)
        .annotate(minute=TruncMinute("finished_at", tzinfo=UTC))
        .values("minute", "outcome")
        .annotate(n=Count("pk"))
        .order_by()
    )
    add(executions, lambda row: "succeeded" if row["outcome"] == Outcome.SUCCEEDED else "failed")
    letters = (
        DeadLetter.objects.using(alias)
        .filter(created_at__gte=start, created_at__lt=end)
        .annotate(minute=TruncMinute("created_at", tzinfo=UTC))
        .values("minute")
        .annotate(n=Count("pk"))
        .order_by()
    )
    add(letters, lambda row: "dead")
    return [
        Minute(at, counts.get("succeeded", 0), counts.get("failed", 0), counts.get("dead", 0))
        for at, counts in buckets.items()
    ]


def paused(using: str | None = None) -> tuple[list[str], list[str]]:
    """The names of the paused queues and of the paused (not retired) definitions."""
    alias = _alias(using)
    queues = list(QueueState.objects.using(alias).filter(paused=True).order_by("name").values_list("name", flat=True))
    definitions = list(
        JobDefinition.objects.using(alias)
        .filter(paused=True, retired=False)
        .order_by("name")
        .values_list("name", flat=True)
    )
    return queues, definitions
