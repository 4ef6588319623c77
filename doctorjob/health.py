"""Is the job system alive? What ``manage.py check_workers`` reports, for a Kubernetes liveness
probe or a cron alert: one problem per line, none when all is well.

Three problems: a queue has runnable jobs and no live worker takes it; a live worker's
heartbeat is older than its lease (stuck, or gone without being marked lost yet); a live
worker with a free handler thread has claimed nothing for ``WEDGED_AFTER`` seconds while jobs
it takes were due (one whose threads are all busy is waiting for them, not wedged: a handler
that never returns is what ``@job(timeout=)`` is for).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Q

from .conf import settings
from .db import database_now
from .models import Job, JobDefinition, QueueState, Status, Worker


@dataclass(frozen=True)
class Problem:
    """One thing wrong, as the one line check_workers prints, with what it is about."""

    kind: str  # "unserved queue", "late heartbeat", "wedged worker"
    subject: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def _takes(worker: Worker) -> list[str] | None:
    """The queues a worker takes; None for every queue."""
    return [q for q in worker.queues.split(",") if q] or None


def _due(now: datetime, queues: list[str] | None, paused: tuple[set[str], set[str]]) -> Q:
    """Jobs a worker taking ``queues`` would claim now: due, and neither queue nor job paused."""
    jobs = Q(status=Status.QUEUED, run_at__lte=now)
    if queues is not None:
        jobs &= Q(queue__in=queues)
    if paused[0]:
        jobs &= ~Q(queue__in=paused[0])
    if paused[1]:
        jobs &= ~Q(name__in=paused[1])
    return jobs


def problems(*, wedged_after: float | None = None, using: str | None = None) -> list[Problem]:
    """Everything wrong with the workers now, by the database's clock; empty when healthy."""
    alias = using or router.db_for_read(Job)
    now = database_now(connections[alias])
    wedged_after = settings.WEDGED_AFTER if wedged_after is None else wedged_after
    paused = (
        set(QueueState.objects.using(alias).filter(paused=True).values_list("name", flat=True)),
        set(JobDefinition.objects.using(alias).filter(paused=True).values_list("name", flat=True)),
    )
    live = list(Worker.objects.using(alias).filter(lost=False).order_by("name"))
    jobs = Job.objects.using(alias)
    found: list[Problem] = []

    # Queues with runnable jobs that no live worker takes. Read through the claim index: one
    # row per queue that has a runnable job.
    runnable = set(jobs.filter(_due(now, None, paused)).values_list("queue", flat=True).distinct().order_by())
    served_all = any(_takes(w) is None for w in live)
    served = {q for w in live for q in (_takes(w) or [])}
    for queue in sorted(runnable):
        if not served_all and queue not in served:
            oldest = jobs.filter(_due(now, [queue], paused)).order_by("run_at").values_list("run_at", flat=True)
            waited = now - (oldest.first() or now)
            found.append(
                Problem(
                    "unserved queue",
                    queue,
                    f"queue {queue!r} has runnable jobs (the oldest due {waited.total_seconds():.0f}s ago) "
                    "and no live worker takes it",
                )
            )

    for worker in live:
        late = (now - worker.last_heartbeat).total_seconds()
        if late > worker.lease:
            found.append(
                Problem(
                    "late heartbeat",
                    worker.name,
                    f"worker {worker.name} last beat {late:.0f}s ago, more than its lease of {worker.lease:g}s",
                )
            )
            continue
        since = max(worker.started_at, worker.last_claimed_at or worker.started_at)
        idle = now - since
        if idle <= timedelta(seconds=wedged_after):
            continue
        # A worker whose handler threads are all busy (long jobs) rightly claims nothing more;
        # one with a free thread and jobs it takes due for the whole time should have claimed.
        holding = jobs.filter(status=Status.RUNNING, worker=worker.name).count()
        waiting = jobs.filter(_due(now, _takes(worker), paused), run_at__lte=since)
        if holding < worker.concurrency and waiting.exists():
            found.append(
                Problem(
                    "wedged worker",
                    worker.name,
                    f"worker {worker.name} is alive but has claimed nothing for {idle.total_seconds():.0f}s "
                    f"(more than {wedged_after:g}s) while jobs it takes were due",
                )
            )
    return found
