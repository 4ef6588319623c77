"""What people do to jobs, from the admin or their own code: retry, cancel, requeue a dead
letter, run a job now. Each is one short transaction that changes only jobs in the states it
applies to, so two people clicking at once cannot both act on the same job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import router, transaction
from django.db.models import F
from django.utils import timezone

from . import trees
from .definitions import desired
from .exceptions import InvalidEnqueue
from .models import DeadLetter, Job, JobDefinition, Status
from .outbox import _write, build_job, enqueue
from .registry import get_job_type
from .signals import job_enqueued


def requeue(dead_letter: DeadLetter, payload: Any = None, *, using: str | None = None) -> Job:
    """Create a fresh queued job from a dead letter and mark it requeued, in one transaction."""
    alias = using or router.db_for_write(DeadLetter)
    with transaction.atomic(using=alias):
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
    alias, now = using or router.db_for_write(Job), timezone.now()
    selected = [j.pk for j in jobs]
    with transaction.atomic(using=alias):
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
        queued = (
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
        return queued


def cancel(jobs: Iterable[Job], *, using: str | None = None) -> int:
    """Cancel queued or waiting jobs so they never run; returns how many were cancelled. A
    cancelled child counts as finished for its parent, in the same transaction."""
    alias = using or router.db_for_write(Job)
    with transaction.atomic(using=alias):
        cancelled = list(
            Job.objects.using(alias)
            .select_for_update()
            .filter(pk__in=[j.pk for j in jobs], status__in=[Status.QUEUED, Status.WAITING])
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
