"""Job trees: a parent waits (status ``waiting``, never claimed) until its children have
finished, then runs and reads their results.

Each parent counts its unfinished children (``pending_children``). A finishing child settles
its parent in the transaction that records its own outcome (``leases.finish``, ``cancel``), so
there is no moment at which the child is finished and its parent does not know: a crash can
lose neither. The count is changed under the parent's row lock, taken in ascending id order
for every row a settlement may change (see ``settle``), so children finishing at once on many
workers neither deadlock nor miss each other; each batch of outcomes settles a parent once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models import Count, F, QuerySet

from .conf import settings
from .db import database_now

if TYPE_CHECKING:
    from .models import Job
    from .registry import JobType

logger = logging.getLogger("doctorjob")

ON_FAILURE = ("fail-parent", "ignore", "remove")
FINISHED = ("succeeded", "dead", "cancelled", "skipped", "relayed")


class Child:
    """A job to enqueue as a child of the job being enqueued: the parent runs once every child
    has finished (succeeded, dead or cancelled).

    ``on_failure`` says what a dead child does to its parent: ``"fail-parent"`` (the parent is
    dead too, without running), ``"ignore"`` (the parent runs and finds it in
    ``ctx.failed_children()``) or ``"remove"`` (the child's job is deleted, its dead letter
    kept, and the parent runs as if it had never had it). The other keyword arguments are
    ``enqueue()``'s.
    """

    __slots__ = ("job", "payload", "on_failure", "children", "options")

    def __init__(
        self,
        job: str | Callable[..., Any] | JobType,
        payload: Any = None,
        *,
        on_failure: str = "fail-parent",
        children: Iterable[Child] = (),
        key: str | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> None:
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {', '.join(map(repr, ON_FAILURE))}, got {on_failure!r}")
        self.job, self.payload, self.on_failure = job, payload, on_failure
        self.children = tuple(children)
        self.options: dict[str, Any] = {
            "key": key,
            "delay": delay,
            "run_at": run_at,
            "priority": priority,
            "queue": queue,
            "max_attempts": max_attempts,
        }

    def __repr__(self) -> str:
        return f"Child({self.job!r}, on_failure={self.on_failure!r}, children={len(self.children)})"


def settle(alias: str, finished: Sequence[Job]) -> list[Job]:
    """Tell the waiting parents of ``finished`` jobs (succeeded, dead, cancelled or skipped)
    that these children are done; return the parents that became runnable or dead.

    Runs inside the transaction that finished the children. A parent whose last child finished
    is queued to run now. A dead child linked with ``fail-parent`` makes its parent dead at once
    (with a dead letter naming the child), and so on up the tree while the links say so; with
    ``remove``, the dead child's job is deleted.

    Rows are locked once, in ascending id order, before anything changes: the parents and, when
    a failure may travel up the tree, every ancestor. Two settlements then never hold a row
    each that the other waits for, whatever the shape of their trees.
    """
    from .models import DeadLetter, Job, Status

    children = [j for j in finished if j.parent_id is not None]
    if not children:
        return []
    jobs = Job.objects.using(alias)
    ids = {j.parent_id for j in children if j.parent_id is not None}
    if any(j.status == Status.DEAD and j.on_failure == "fail-parent" for j in children):
        frontier = set(ids)
        while frontier:  # a parent never changes: no lock needed to walk up
            above = jobs.filter(id__in=frontier, parent__isnull=False).values_list("parent_id", flat=True)
            frontier = {pk for pk in above if pk is not None}
            frontier -= ids
            ids |= frontier
    fields = ("id", "name", "queue", "payload", "priority", "attempts", "max_attempts", "key", "status")
    locked = {
        j.id: j
        for j in jobs.select_for_update()
        .filter(id__in=sorted(ids))
        .order_by("id")
        .only(*fields, "parent_id", "on_failure", "pending_children")
    }
    now = database_now(connections[alias])
    changed: list[Job] = []
    removed: list[int] = []
    letters: list[DeadLetter] = []
    while children:
        by_parent: dict[int | None, list[Job]] = defaultdict(list)
        for child in children:
            by_parent[child.parent_id].append(child)
        children = []
        for parent_id, group in sorted(by_parent.items()):
            parent = locked.get(parent_id or 0)
            if parent is None or parent.status != Status.WAITING:
                continue  # decided already (dead by another child, cancelled) or gone
            culprit = next((c for c in group if c.status == Status.DEAD and c.on_failure == "fail-parent"), None)
            if culprit is not None:
                parent.status, parent.finished_at = Status.DEAD, now
                parent.error = f"child {culprit.id} ({culprit.name}) failed"
                letters.append(
                    DeadLetter(
                        job_id=parent.id,
                        created_at=now,
                        error=parent.error,
                        **{f: getattr(parent, f) for f in fields[1:-1]},
                    )
                )
                logger.warning("job dead job_id=%s name=%s: %s", parent.id, parent.name, parent.error)
                if parent.parent_id is not None:
                    children.append(parent)  # up the tree, in this same pass
            else:
                removed += [c.id for c in group if c.status == Status.DEAD and c.on_failure == "remove"]
                parent.pending_children = (parent.pending_children or 0) - len(group)
                if parent.pending_children <= 0:
                    parent.status, parent.run_at, parent.pending_children = Status.QUEUED, now, 0
            changed.append(parent)
    for parent in changed:
        if parent.status == Status.DEAD:
            jobs.filter(id=parent.id).update(status=parent.status, finished_at=now, error=parent.error)
        else:
            update: dict[str, Any] = {"pending_children": parent.pending_children}
            if parent.status == Status.QUEUED:
                update.update(status=Status.QUEUED, run_at=now)
            jobs.filter(id=parent.id).update(**update)
    DeadLetter.objects.using(alias).bulk_create(letters)
    if removed:
        delete_jobs(alias, removed)
    runnable = [p for p in changed if p.status == Status.QUEUED]
    if runnable:
        notify(alias, {p.queue for p in runnable})
    return [p for p in changed if p.status != Status.WAITING]


def reopen(alias: str, ids: Sequence[int]) -> None:
    """Jobs ``ids`` were queued again (retried): a waiting parent waits for them again, and
    one of them whose own children have not all finished waits for those."""
    from .models import Job, Status

    jobs = Job.objects.using(alias)
    retried = list(jobs.filter(id__in=ids).values_list("id", "parent_id"))
    parents = sorted({parent for _, parent in retried if parent is not None})
    unfinished = dict(
        jobs.filter(parent_id__in=[pk for pk, _ in retried])
        .exclude(status__in=FINISHED)
        .values_list("parent_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    if not parents and not unfinished:
        return
    locked = jobs.select_for_update().filter(id__in=parents, status=Status.WAITING).order_by("id")
    waiting = set(locked.values_list("id", flat=True))
    for parent in waiting:
        again = sum(1 for _, p in retried if p == parent)
        jobs.filter(id=parent).update(pending_children=F("pending_children") + again)
    for pk, count in unfinished.items():
        jobs.filter(id=pk).update(status=Status.WAITING, pending_children=count)


def delete_jobs(alias: str, ids: Iterable[int] | QuerySet[Any]) -> int:
    """Delete jobs and their execution history; their dead letters stay, pointing nowhere."""
    from .models import DeadLetter, Job, JobExecution

    JobExecution.objects.using(alias).filter(job_id__in=ids)._raw_delete(alias)
    DeadLetter.objects.using(alias).filter(job_id__in=ids).update(job_id=None)
    DeadLetter.objects.using(alias).filter(requeued_job_id__in=ids).update(requeued_job_id=None)
    return Job.objects.using(alias).filter(id__in=ids)._raw_delete(alias)


def notify(alias: str, queues: Iterable[str]) -> None:
    """Wake the workers of ``queues`` when the transaction commits (PostgreSQL)."""
    connection = connections[alias]
    if connection.vendor == "postgresql" and settings.NOTIFY:
        from .outbox import CHANNEL

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, q) FROM unnest(%s::text[]) AS q", [CHANNEL, sorted(queues)])


def children_results(alias: str, job_id: int) -> dict[str, Any]:
    """``{str(id): result}`` of the succeeded children of ``job_id``."""
    from .models import Job, Status

    rows = Job.objects.using(alias).filter(parent_id=job_id, status=Status.SUCCEEDED).order_by("id")
    return {str(pk): result for pk, result in rows.values_list("id", "result")}


def failed_children(alias: str, job_id: int) -> dict[str, str]:
    """``{str(id): error}`` of the dead or cancelled children of ``job_id``."""
    from .models import Job, Status

    rows = Job.objects.using(alias).filter(parent_id=job_id, status__in=[Status.DEAD, Status.CANCELLED])
    return {str(pk): error or status for pk, error, status in rows.order_by("id").values_list("id", "error", "status")}
