"""Helpers for the tests of a project that uses doctorjob.

A real worker cannot see what a test wrote inside Django's ``TestCase`` transaction, so
``run_jobs()`` runs the due jobs in the test's own process, thread and transaction, through the
handlers, the fenced finish and the dead letters the worker uses. ``enqueued()`` and
``assert_enqueued()`` say what a test enqueued; ``perform()`` runs one handler directly. Also a
pytest plugin: the ``doctorjob`` fixture gives the four of them.

Nothing here imports Django models at import time: pytest loads the plugin before Django is set up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Job

WORKER = "doctorjob.testing"
MAX_RUNS = 10_000  # run_jobs() gives up past this many attempts: a job that keeps enqueueing itself?


@dataclass(frozen=True)
class Ran:
    """One attempt ``run_jobs()`` ran: the job as stored after it, what came of it (succeeded,
    retrying, dead or skipped), the handler's return value and the error it recorded."""

    job: Job
    outcome: str
    result: Any = None
    error: str = ""


def run_jobs(
    *,
    queues: Sequence[str] | None = None,
    until_empty: bool = True,
    now: datetime | None = None,
    using: str | None = None,
) -> list[Ran]:
    """Run every job due by ``now`` (default: the database's now), one at a time in claim
    order, and return what ran. With ``until_empty`` (the default) it goes on with what those
    jobs enqueued and with retries, their backoff skipped, until nothing is due; otherwise it
    runs one batch of what was due when called. Paused definitions and queues, and relay jobs,
    are left alone; schedules are not ticked. Each attempt runs in a savepoint: a failed attempt's writes are
    rolled back (a plain job's would be kept by a real worker) and the test's transaction
    stays usable.
    """
    from django.db import connections, router, transaction

    from . import leases, relays
    from .db import database_now
    from .leases import _FIELDS, _job
    from .models import Job, JobDefinition, QueueState, Status
    from .signals import RETRYING, job_finished, send_robust
    from .worker import DONE, Worker

    alias = using or router.db_for_write(Job)
    savepoint_create = getattr(transaction, "savepoint_create", None) or transaction.savepoint  # Django 6.1 renamed it
    worker = Worker(using=alias, burst=True, log_jobs=False)
    worker.id = WORKER
    # A failed attempt's savepoint is rolled back; the progress it saved is written afterwards.
    progress: dict[int, Any] = {}
    worker.progress_sink = progress.__setitem__
    ran: list[Ran] = []
    while True:
        due = now or database_now(connections[alias])
        jobs = (
            Job.objects.using(alias)
            .filter(status=Status.QUEUED, run_at__lte=due)
            .exclude(name__in=JobDefinition.objects.using(alias).filter(paused=True).values("name"))
            .exclude(queue__in=QueueState.objects.using(alias).filter(paused=True).values("name"))
        )
        if queues:
            jobs = jobs.filter(queue__in=list(queues))
        relayed = relays.relayed()  # a relay publishes those: assert_enqueued() them instead
        jobs = jobs.exclude(name__in=list(relayed.names)).exclude(queue__in=list(relayed.queues))
        ids = list(jobs.order_by("-priority", "run_at", "id").values_list("id", flat=True)[:100])
        if not ids:
            return ran
        for pk in ids:
            # One at a time, as one worker thread would run them: a job of a singleton or of a
            # concurrency key only ever runs alone, and what a handler changes is seen by the next.
            lease_id = uuid.uuid4()
            claimed = (
                Job.objects.using(alias)
                .filter(id=pk, status=Status.QUEUED)
                .update(**leases.claimed_fields(lease_id, WORKER, due, 3600.0))
            )
            if not claimed:  # a handler cancelled or changed it
                continue
            if len(ran) >= MAX_RUNS:
                raise RuntimeError(
                    f"run_jobs() ran {MAX_RUNS} attempts and jobs are still due: "
                    "does a job enqueue itself, or keep failing with many attempts?"
                )
            job = _job(Job.objects.using(alias).filter(id=pk).values_list(*_FIELDS).get(), lease_id, WORKER, alias)
            savepoint = savepoint_create(using=alias)
            finish, state = worker._execute(job, None)
            if finish.outcome == RETRYING:
                finish = finish._replace(delay=0.0)  # no backoff in tests
            if state != DONE:
                if finish.outcome != "succeeded":
                    transaction.savepoint_rollback(savepoint, using=alias)
                    savepoint = None
                leases.finish(alias, [finish])
            if pk in progress:  # kept whatever became of the attempt, as a real worker keeps it
                Job.objects.using(alias).filter(id=pk).update(progress=progress.pop(pk))
            if savepoint is not None:
                transaction.savepoint_commit(savepoint, using=alias)
            send_robust(job_finished, job=finish.job, outcome=finish.outcome, duration=finish.duration)
            ran.append(Ran(finish.job, finish.outcome, finish.result, finish.error))
        if not until_empty:
            return ran


def enqueued(job: str | Callable[..., Any] | None = None, *, using: str | None = None) -> list[Job]:
    """The jobs waiting to run (status ``queued``), of one job type or all, in id order."""
    from django.db import router

    from .models import Job, Status
    from .registry import get_job_type

    jobs = Job.objects.using(using or router.db_for_write(Job)).filter(status=Status.QUEUED)
    if job is not None:
        jobs = jobs.filter(name=get_job_type(job).name)
    return list(jobs.order_by("id"))


def assert_enqueued(
    job: str | Callable[..., Any],
    payload: Any = None,
    *,
    count: int | None = None,
    using: str | None = None,
    **fields: Any,
) -> list[Job]:
    """Assert that jobs of ``job`` wait to run, with this ``payload`` (if given) and these
    ``fields`` (``queue="emails"``, ``key=...``, ``priority=...``), ``count`` of them if given,
    else at least one; return them. The failure lists what *was* enqueued."""
    from .registry import get_job_type

    name = get_job_type(job).name
    everything = enqueued(using=using)
    matching = [
        j
        for j in everything
        if j.name == name
        and (payload is None or j.payload == payload)
        and all(getattr(j, field) == value for field, value in fields.items())
    ]
    if (len(matching) != count) if count is not None else not matching:
        wanted = " ".join(
            filter(
                None,
                [
                    repr(name),
                    f"payload={payload!r}" if payload is not None else "",
                    *(f"{k}={v!r}" for k, v in fields.items()),
                ],
            )
        )
        found = "\n".join(
            f"  #{j.pk} {j.name} payload={j.payload!r} queue={j.queue!r} key={j.key!r} "
            f"priority={j.priority} run_at={j.run_at.isoformat()}"
            for j in everything
        )
        raise AssertionError(
            f"expected {count if count is not None else 'at least one'} job(s) {wanted} enqueued, found "
            f"{len(matching)}; enqueued: " + (f"\n{found}" if everything else "nothing")
        )
    return matching


def perform(
    job: str | Callable[..., Any],
    payload: Any = None,
    *,
    attempt: int = 1,
    max_attempts: int | None = None,
    key: str | None = None,
) -> Any:
    """Run ``job``'s handler once, here, and return what it returns (exceptions propagate).
    The payload is checked as ``enqueue()`` checks it; the handler gets a real ``JobContext``
    (``job_id`` 0: there is no row)."""
    from .context import JobContext
    from .outbox import build_job
    from .registry import get_job_type

    job_type = get_job_type(job)
    row = build_job(job_type, payload, key=key, max_attempts=max_attempts)  # raises InvalidPayload etc.
    ctx = JobContext(0, job_type.name, row.queue, attempt, row.max_attempts, key, row.created_at, WORKER)
    return job_type.call(row.payload, ctx)


class Helpers:
    """The ``doctorjob`` pytest fixture: the helpers of this module as methods."""

    run_jobs = staticmethod(run_jobs)
    enqueued = staticmethod(enqueued)
    assert_enqueued = staticmethod(assert_enqueued)
    perform = staticmethod(perform)


try:
    import pytest
except ImportError:  # pragma: no cover - the plugin is only loaded by pytest
    pass
else:

    @pytest.fixture(name="doctorjob")
    def doctorjob_fixture() -> Helpers:
        """``doctorjob.run_jobs()``, ``.enqueued()``, ``.assert_enqueued()``, ``.perform()``; use
        it with a database fixture or mark (``db``, ``django_db``)."""
        return Helpers()
