"""What people do to jobs, from the admin or their own code: retry, cancel, requeue a dead
letter, run a job now. Each is one short transaction that changes only jobs in the states it
applies to, so two people clicking at once cannot both act on the same job."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, router
from django.db.models import F, QuerySet
from django.utils import timezone

from . import trees
from .db import writing
from .definitions import desired
from .exceptions import DoctorJobError, InvalidEnqueue, UnknownJob
from .models import DeadLetter, Job, JobDefinition, QueueState, Status
from .outbox import _write, build_job, enqueue
from .registry import get_job_type
from .signals import job_enqueued


def requeue(dead_letter: DeadLetter, payload: Any = None, *, using: str | None = None) -> Job:
    """Create a fresh queued job from a dead letter and mark it requeued, in one transaction."""
    alias = using or router.db_for_write(DeadLetter)
    with writing(alias):
        letter = DeadLetter.objects.using(alias).select_for_update().get(pk=dead_letter.pk)
        if letter.requeued_at is not None:
            raise InvalidEnqueue(f"dead letter #{letter.pk} was already requeued as job #{letter.requeued_job_id}")
        row = build_job(
            letter.name,
            letter.payload if payload is None else payload,
            priority=letter.priority,
            queue=letter.queue,
            max_attempts=letter.max_attempts,
        )
        job = _write([row], alias)[0]
        letter.requeued_at, letter.requeued_job = timezone.now(), job
        letter.save(update_fields=["requeued_at", "requeued_job"])
        if job_enqueued.receivers:
            job_enqueued.send(sender=Job, job=job)
    return job


def retry(jobs: Iterable[Job], *, using: str | None = None) -> int:
    """Queue dead or cancelled jobs to run now and mark their dead letters requeued as them, so
    the same work cannot be requeued twice; returns how many were queued."""
    return _retry([j.pk for j in jobs], using or router.db_for_write(Job))[0]


def _retry(selected: list[int], alias: str) -> tuple[int, int]:
    """retry() on job ids; returns (how many were queued, how many had a dead letter already requeued)."""
    now = timezone.now()
    with writing(alias):
        # The dead letters first, locked, in the order requeue() locks them: a requeue of one of
        # them running at this moment either committed before (and the job is left alone here)
        # or waits for this transaction and then finds its dead letter requeued.
        letters = DeadLetter.objects.using(alias).select_for_update().filter(job_id__in=selected).order_by("pk")
        already = {job_id for job_id, requeued_at in letters.values_list("job_id", "requeued_at") if requeued_at}
        pks = list(
            Job.objects.using(alias)
            .select_for_update()
            .filter(
                pk__in=[pk for pk in selected if pk not in already],
                status__in=[Status.DEAD, Status.CANCELLED],
            )
            .values_list("pk", flat=True)
        )
        DeadLetter.objects.using(alias).filter(job_id__in=pks, requeued_at__isnull=True).update(
            requeued_at=now, requeued_job_id=F("job_id")
        )
        retried = (
            Job.objects.using(alias)
            .filter(pk__in=pks)
            .update(
                status=Status.QUEUED,
                run_at=now,
                attempts=0,
                lease_id=None,
                lease_expires_at=None,
                worker="",
                finished_at=None,
            )
        )
        trees.reopen(alias, pks)
        return retried, len(already)


def cancel(jobs: Iterable[Job], *, using: str | None = None) -> int:
    """Cancel queued or waiting jobs so they never run; returns how many were cancelled. A
    cancelled child counts as finished for its parent, in the same transaction."""
    return _cancel([j.pk for j in jobs], using or router.db_for_write(Job))


def _cancel(selected: list[int], alias: str) -> int:
    with writing(alias):
        cancelled = list(
            Job.objects.using(alias)
            .select_for_update()
            .filter(pk__in=selected, status__in=[Status.QUEUED, Status.WAITING])
            .order_by("pk")
            .only("pk", "parent_id", "on_failure", "name")
        )
        Job.objects.using(alias).filter(pk__in=[j.pk for j in cancelled]).update(
            status=Status.CANCELLED, finished_at=timezone.now(), error="cancelled"
        )
        for job in cancelled:
            job.status = Status.CANCELLED
        trees.settle(alias, cancelled)
    return len(cancelled)


def run_now(name: str, payload: Any = None, *, using: str | None = None) -> Job:
    """Enqueue ``name`` to run now, with its definition's default payload unless one is given."""
    job_type = get_job_type(name)
    if payload is None:
        alias = using or router.db_for_read(JobDefinition)
        definition = JobDefinition.objects.using(alias).filter(name=job_type.name).first()
        payload = definition.payload if definition else desired(job_type)["payload"]
    return enqueue(job_type, payload, using=using)


# -- on everything a filter matches ------------------------------------------------------------

CHUNK = 2000  # rows changed per transaction: short locks, and within every database's parameter limit


@dataclass(frozen=True)
class Bulk:
    """What a bulk operation did: how many rows it changed and, by reason, how many it skipped."""

    changed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Bulk) -> Bulk:
        skipped = dict(self.skipped)
        for reason, count in other.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        return Bulk(self.changed + other.changed, {r: c for r, c in skipped.items() if c})

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())


def _chunks(queryset: QuerySet[Any]) -> Iterator[list[int]]:
    """The primary keys ``queryset`` matches, CHUNK at a time in key order: one indexed query a
    chunk however many rows match, and rows changed meanwhile are seen as they are then."""
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    last = None
    while True:
        chunk = list((keys if last is None else keys.filter(pk__gt=last))[:CHUNK])
        if not chunk:
            return
        yield chunk
        last = chunk[-1]


def retry_matching(jobs: QuerySet[Job]) -> Bulk:
    """retry() every job ``jobs`` matches, a chunk per transaction."""
    result = Bulk()
    for chunk in _chunks(jobs):
        retried, already = _retry(chunk, jobs.db)
        result += Bulk(
            retried,
            {
                "whose dead letter was already requeued": already,
                "that were not dead or cancelled": len(chunk) - retried - already,
            },
        )
    return result


def cancel_matching(jobs: QuerySet[Job]) -> Bulk:
    """cancel() every job ``jobs`` matches, a chunk per statement."""
    result = Bulk()
    for chunk in _chunks(jobs):
        cancelled = _cancel(chunk, jobs.db)
        result += Bulk(cancelled, {"that were not queued or waiting": len(chunk) - cancelled})
    return result


def purge_matching(jobs: QuerySet[Job]) -> Bulk:
    """Delete every job ``jobs`` matches with its execution history, except running jobs (a
    worker holds them), in SQL, a chunk per transaction. Dead letters stay, unlinked."""
    result, alias = Bulk(), jobs.db
    for chunk in _chunks(jobs):
        with writing(alias):
            # Locked first, as a claim would lock them: a job claimed meanwhile is left alone.
            doomed = list(
                Job.objects.using(alias)
                .select_for_update()
                .filter(pk__in=chunk)
                .exclude(status=Status.RUNNING)
                .order_by("pk")
                .only("pk", "status", "parent_id", "on_failure", "name")
            )
            # An unfinished child purged is finished for its waiting parent, as if cancelled.
            unfinished = [j for j in doomed if j.parent_id and j.status in (Status.QUEUED, Status.WAITING)]
            for job in unfinished:
                job.status = Status.CANCELLED
            trees.settle(alias, unfinished)
            deleted = trees.delete_jobs(alias, [j.pk for j in doomed])
        result += Bulk(deleted, {"that were running": len(chunk) - deleted})
    return result


def requeue_matching(letters: QuerySet[DeadLetter]) -> Bulk:
    """requeue() every dead letter ``letters`` matches with its own payload: a chunk per
    transaction, its new jobs written in one statement and its letters marked in another."""
    result, alias = Bulk(), letters.db
    for chunk in _chunks(letters):
        unknown = invalid = 0
        with writing(alias):
            todo = list(
                DeadLetter.objects.using(alias)
                .select_for_update()
                .filter(pk__in=letters.filter(pk__range=(chunk[0], chunk[-1])).values("pk"), requeued_at__isnull=True)
                .order_by("pk")
                .values_list("pk", "name", "payload", "priority", "queue", "max_attempts")
            )
            rows, marked = [], []
            for pk, name, payload, priority, queue, max_attempts in todo:
                try:
                    rows.append(build_job(name, payload, priority=priority, queue=queue, max_attempts=max_attempts))
                except UnknownJob:
                    unknown += 1
                except DoctorJobError:  # its payload no longer passes the job's schema
                    invalid += 1
                else:
                    marked.append(pk)
            jobs = _write(rows, alias) if rows else []
            _mark_requeued(alias, list(zip(marked, [job.pk for job in jobs])))
            if job_enqueued.receivers:
                for job in jobs:
                    job_enqueued.send(sender=Job, job=job)
        result += Bulk(
            len(marked),
            {
                "already requeued": len(chunk) - len(todo),
                "whose job is no longer registered": unknown,
                "whose payload no longer passes the job's schema": invalid,
            },
        )
    return result


def _mark_requeued(alias: str, requeued: list[tuple[int, int]]) -> None:
    """Mark dead letters requeued as their new jobs, (letter, job) pairs, in one UPDATE
    (bulk_update() spends seconds building a Django expression per row)."""
    if not requeued:
        return
    connection, now = connections[alias], timezone.now()
    table, column = connection.ops.quote_name(DeadLetter._meta.db_table), connection.ops.quote_name("id")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            letters, jobs = zip(*requeued)
            cursor.execute(
                f"UPDATE {table} AS d SET requeued_at = %s, requeued_job_id = v.job "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS v(letter, job) WHERE d.id = v.letter",
                [now, list(letters), list(jobs)],
            )
            return
        params: list[Any] = [now]
        for pair in requeued:
            params += pair
        params += [letter for letter, _ in requeued]
        cursor.execute(
            f"UPDATE {table} SET requeued_at = %s, requeued_job_id = CASE {column} "
            + " ".join(["WHEN %s THEN %s"] * len(requeued))
            + f" END WHERE {column} IN ({', '.join(['%s'] * len(requeued))})",
            params,
        )


def set_paused(
    model: type[QueueState] | type[JobDefinition], name: str, paused: bool, *, using: str | None = None
) -> bool:
    """Pause or resume one queue or definition by name; False if there is none such."""
    alias = using or router.db_for_write(model)
    if model is QueueState and paused:
        QueueState.objects.using(alias).get_or_create(name=name)
    return bool(model.objects.using(alias).filter(name=name).update(paused=paused, updated_at=timezone.now()))
