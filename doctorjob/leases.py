"""Every state change a worker writes: claim, renew, succeed, retry, dead-letter, release,
plus the sweeps any worker runs (expired leases, retention).

A claim gives the claimed jobs a fresh ``lease_id``; every later write matches on
``(id, lease_id, status='running')``. A worker whose lease ran out and was taken over by
another therefore changes nothing: the newer state always wins.
"""
from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from .conf import settings
from .models import DeadLetter, Job, JobExecution, Outcome, Status, Worker

WORKER_LOST = "worker lost: its lease expired before the job finished"


def execute(
    connection, sql: str, params: Sequence[Any], *, prepare: bool = False, planner: str = ""
) -> list[tuple[Any, ...]] | int:
    """Run one of the hot PostgreSQL statements with server-side binding: arrays travel as
    binary parameters instead of being quoted into the SQL text by Django's client-side cursor.
    With ``prepare`` the statement is parsed and planned once per connection (see
    ``may_prepare``). ``planner`` is a statement of ``set_config(name, value, true)`` calls
    for this statement only; it is left out inside ``atomic()`` (it would last until the block
    ends) and with a libpq older than 14 (no pipeline). Returns the rows, or the row count for
    a statement that returns none. Errors surface as Django's database exceptions, inside or
    outside ``atomic()``."""
    import psycopg  # only PostgreSQL installs have it

    connection.ensure_connection()
    started = time.monotonic()
    pg = connection.connection
    try:
        prepare = prepare and may_prepare(connection)
        # Django sets psycopg's prepare_threshold to None, which turns preparation off for the
        # whole connection. Lift it for this one statement: the application's own queries are
        # still never prepared, and psycopg keeps its bookkeeping (a rollback deallocates).
        lift = prepare and pg.prepare_threshold is None
        # One psycopg cursor per connection, kept: making one costs more than running a
        # prepared INSERT's Python side.
        cursor = getattr(connection, "_doctorjob_cursor", None)
        if cursor is None or cursor.connection is not pg:
            cursor = connection._doctorjob_cursor = psycopg.Cursor(pg)
            cursor.adapters.register_loader("jsonb", _jsonb_loader())
        with connection.wrap_database_errors:
            if planner and not connection.in_atomic_block and psycopg.Pipeline.is_supported():
                # Both statements before one Sync: one round trip and one implicit
                # transaction, which the planner settings (set_config(..., true)) last for.
                with pg.pipeline():
                    cursor.execute(planner)
                    cursor.execute(sql, params, binary=True)
                    return cursor.fetchall()
            if lift:
                pg.prepare_threshold = sys.maxsize
            try:  # binary results: no timestamp text parsing
                cursor.execute(sql, params, binary=True, prepare=prepare or None)
            finally:
                if lift:
                    pg.prepare_threshold = None
            return cursor.fetchall() if cursor.pgresult.nfields else cursor.rowcount
    finally:
        if connection.queries_logged:  # DEBUG, debug toolbars, CaptureQueriesContext see it too
            connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})


@functools.cache
def _jsonb_loader() -> type:
    """A loader for jsonb in binary, for every payload a worker claims: a version byte, then the
    document as PostgreSQL prints it, in the client encoding (UTF-8: Django sets it) and with
    nothing around it, so it is parsed as it comes. psycopg's default, ``json.loads(bytes)``,
    first sniffs the encoding and then checks for surrounding whitespace, which made loading a
    small payload four times as costly. It serves doctorjob's own cursor only: Django's cursors
    keep psycopg's loaders, and a ``psycopg.types.json.set_json_loads()`` does not reach it."""
    from psycopg import DataError
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    decode = json.JSONDecoder().raw_decode

    class JsonbLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> Any:
            if data[0] != 1:
                raise DataError(f"unknown jsonb binary format: {data[0]}")
            return decode(str(data[1:], "utf-8"))[0]

    return JsonbLoader


def behind_pooler(connection) -> bool:
    """Whether the database is reached through a transaction pooler (PgBouncer in transaction
    mode), as Django is told with DISABLE_SERVER_SIDE_CURSORS: session state, such as a prepared
    statement or a LISTEN, then lasts one transaction on whichever server connection ran it."""
    return bool(connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"))


def may_prepare(connection) -> bool:
    """Whether doctorjob may keep prepared statements on this PostgreSQL connection:
    DOCTORJOB["PREPARE"], by default yes unless it is behind a transaction pooler."""
    return not behind_pooler(connection) if settings.PREPARE is None else settings.PREPARE


class Claimed(NamedTuple):
    """A job a worker holds under ``lease_id``. A named tuple: a worker makes thousands a
    second, and a frozen dataclass costs several times more to build."""

    id: int
    name: str
    queue: str
    payload: Any
    attempts: int
    max_attempts: int
    priority: int
    key: str | None
    created_at: datetime
    version: int
    started_at: datetime
    lease_id: uuid.UUID


_COLUMNS = ("id", "name", "queue", "payload", "attempts", "max_attempts", "priority", "key", "created_at",
            "version", "started_at")

# PostgreSQL claim, one statement and so one short transaction: lock up to `limit` runnable
# jobs in priority, run time, id order, skipping rows another worker is claiming right now
# (SKIP LOCKED: workers never wait on each other nor take the same row), and mark them running
# under a new lease. The row lock is held only for this statement; from then on the lease,
# not a lock, says who owns the job. The status check is re-evaluated on the locked row, so a
# job changed by a concurrent transaction is never claimed twice.
#
# The planner is told to read an index that returns jobs in claim order (enable_sort and
# enable_bitmapscan off, for this statement only). Without statistics (a new table, until
# autovacuum first analyses it: a fresh install's first burst) it otherwise guesses that few
# jobs match and picks a bitmap scan and a sort of the whole runnable backlog, for every batch:
# 28 ms instead of 7 to claim 500 of 40,000 jobs.
_CLAIM_PLANNER = "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"
_CLAIM = """
UPDATE doctorjob_job AS j
SET status = 'running', attempts = j.attempts + 1, lease_id = %s, worker = %s,
    lease_expires_at = %s, started_at = %s, finished_at = NULL
WHERE j.id IN (
    SELECT id FROM doctorjob_job
    WHERE status = 'queued' AND run_at <= %s AND concurrency_key IS NULL {filters}
    ORDER BY priority DESC, run_at, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.name, j.queue, j.payload, j.attempts, j.max_attempts, j.priority, j.key, j.created_at,
          j.version, j.started_at, j.run_at
"""


def claim(
    alias: str,
    *,
    worker: str,
    limit: int,
    lease: float,
    queues: Sequence[str] | None = None,
    paused_names: Sequence[str] = (),
    paused_queues: Sequence[str] = (),
) -> list[Claimed]:
    """Take up to ``limit`` runnable jobs for ``worker`` and return them, running under one new lease.

    Jobs with a concurrency key are left to ``claim_keyed()``.
    """
    lease_id = uuid.uuid4()
    now = timezone.now()
    expires = now + timedelta(seconds=lease)
    connection = connections[alias]
    if connection.vendor == "postgresql":
        params: list[Any] = [lease_id, worker, expires, now, now]
        filters = []
        if queues and len(queues) == 1:  # equality lets the (queue, priority, run_at) index order the scan
            filters.append("AND queue = %s")
            params.append(queues[0])
        elif queues:
            filters.append("AND queue = ANY(%s)")
            params.append(list(queues))
        for column, values in (("name", paused_names), ("queue", paused_queues)):
            if values:
                filters.append(f"AND {column} <> ALL(%s)")
                params.append(list(values))
        params.append(limit)
        rows = execute(connection, _CLAIM.format(filters=" ".join(filters)), params, planner=_CLAIM_PLANNER)
        # The claim order, for the handlers to run them in: priority descending, then run_at and id
        # (two stable sorts on C key functions: two thirds of the cost of one on a key tuple).
        rows.sort(key=itemgetter(11, 0))
        rows.sort(key=itemgetter(6), reverse=True)
        return [_claimed(row, lease_id) for row in rows]

    runnable = _runnable(alias, now, queues, paused_names, paused_queues).filter(concurrency_key__isnull=True)
    changes = _claim_changes(lease_id, worker, expires, now)
    if connection.features.has_select_for_update_skip_locked:
        # MySQL/MariaDB: the same SKIP LOCKED claim in a short transaction of two statements.
        with transaction.atomic(using=alias):
            ids = list(runnable.select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
            Job.objects.using(alias).filter(id__in=ids, status=Status.QUEUED).update(**changes)
    else:
        # SQLite: one conditional UPDATE is atomic (writers are serialised), and the status
        # check inside it means two workers can never both flip the same row to running.
        Job.objects.using(alias).filter(
            id__in=runnable.values("id")[:limit], status=Status.QUEUED
        ).update(**changes)
    rows = (Job.objects.using(alias).filter(lease_id=lease_id, status=Status.RUNNING)
            .order_by("-priority", "run_at", "id")
            .values_list(*_COLUMNS))
    return [_claimed(row, lease_id) for row in rows]


def _runnable(alias, now, queues, paused_names, paused_queues):
    runnable = Job.objects.using(alias).filter(status=Status.QUEUED, run_at__lte=now)
    if queues:
        runnable = runnable.filter(queue__in=queues)
    if paused_names:
        runnable = runnable.exclude(name__in=paused_names)
    if paused_queues:
        runnable = runnable.exclude(queue__in=paused_queues)
    return runnable.order_by("-priority", "run_at", "id")


def _claim_changes(lease_id: uuid.UUID, worker: str, expires: datetime, now: datetime) -> dict[str, Any]:
    return dict(status=Status.RUNNING, attempts=F("attempts") + 1, lease_id=lease_id,
                worker=worker, lease_expires_at=expires, started_at=now, finished_at=None)


def claim_keyed(
    alias: str,
    *,
    worker: str,
    limit: int,
    lease: float,
    skip_on_overlap: Sequence[str] = (),
    queues: Sequence[str] | None = None,
    paused_names: Sequence[str] = (),
    paused_queues: Sequence[str] = (),
) -> tuple[list[Claimed], list[int]]:
    """Claim jobs that hold a concurrency key (singletons, one-per-tenant), one at a time.

    The partial unique index on running rows' ``concurrency_key`` is what forbids overlap: a
    second claim of the same key fails inside its savepoint, whichever worker tries it. The
    job then waits queued, or is skipped when its name is in ``skip_on_overlap``.
    Returns (claimed, ids of skipped jobs).
    """
    now = timezone.now()
    expires = now + timedelta(seconds=lease)
    connection = connections[alias]
    candidates = _runnable(alias, now, queues, paused_names, paused_queues).filter(concurrency_key__isnull=False)
    claimed, skipped = [], []
    with transaction.atomic(using=alias):
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        rows = list(candidates.values_list("id", "name", "concurrency_key")[:limit])
        keys_taken: set[str] = set()
        for job_id, name, key in rows:
            lease_id = uuid.uuid4()
            try:
                if key in keys_taken:
                    raise IntegrityError(key)
                with transaction.atomic(using=alias):
                    Job.objects.using(alias).filter(id=job_id, status=Status.QUEUED).update(
                        **_claim_changes(lease_id, worker, expires, now))
                keys_taken.add(key)
            except IntegrityError:
                if name in skip_on_overlap:
                    Job.objects.using(alias).filter(id=job_id, status=Status.QUEUED).update(
                        status=Status.SKIPPED, finished_at=now,
                        error=f"skipped: another run holding concurrency key {key!r} was in progress")
                    skipped.append(job_id)
                continue
            claimed.extend(_claimed(row, lease_id) for row in
                           Job.objects.using(alias).filter(id=job_id, lease_id=lease_id).values_list(*_COLUMNS))
    return claimed, skipped


def _claimed(row: Sequence[Any], lease_id: uuid.UUID) -> Claimed:
    # The payload arrives decoded (binary jsonb results, or JSONField's from_db_value); a str
    # here is a payload that is a JSON string, not JSON text to parse again.
    return Claimed(*row[:11], lease_id)


def skip(alias: str, job: Claimed, reason: str) -> bool:
    """Mark a claimed job skipped (not retried), keeping the reason."""
    return bool(_owned(alias, job).update(status=Status.SKIPPED, error=reason, lease_expires_at=None,
                                          finished_at=timezone.now()))


def record_executions(alias: str, rows: Sequence[JobExecution]) -> None:
    """Execution history, one row per attempt, in one INSERT."""
    if rows:
        JobExecution.objects.using(alias).bulk_create(rows)


def _owned(alias: str, job: Claimed):
    return Job.objects.using(alias).filter(id=job.id, lease_id=job.lease_id, status=Status.RUNNING)


def renew(alias: str, jobs: Iterable[Claimed], lease: float) -> int:
    """Push the lease deadline of every job in ``jobs`` that we still hold; returns how many."""
    jobs = list(jobs)
    if not jobs:
        return 0
    return Job.objects.using(alias).filter(
        id__in=[j.id for j in jobs], lease_id__in={j.lease_id for j in jobs}, status=Status.RUNNING,
    ).update(lease_expires_at=timezone.now() + timedelta(seconds=lease))


# Succeed many jobs in one statement, each only if our lease still holds it, and write the
# execution history of exactly those jobs in the same statement.
_SUCCEED = """
WITH v AS (
    SELECT * FROM unnest(%b::bigint[], %b::uuid[], %b::timestamptz[], %b::text[], %b::float8[])
        AS v(id, lease_id, finished_at, result, duration)
), done AS (
    UPDATE doctorjob_job AS j
    SET status = 'succeeded', finished_at = v.finished_at, result = v.result::jsonb,
        lease_expires_at = NULL, error = '', traceback = ''
    FROM v
    WHERE j.id = v.id AND j.lease_id = v.lease_id AND j.status = 'running'
    RETURNING j.id, j.attempts, j.started_at, v.finished_at, v.duration
)
INSERT INTO doctorjob_jobexecution (job_id, attempt, worker, started_at, finished_at, duration, outcome, error)
SELECT id, attempts, %s, started_at, finished_at, make_interval(secs => duration), 'succeeded', ''
FROM done
RETURNING job_id
"""


def succeed(alias: str, done: Sequence[tuple[Claimed, Any, datetime, float]], worker: str) -> list[int]:
    """Mark jobs succeeded (each only if its lease is still ours) and record their executions.

    ``done`` holds (job, result, finished_at, duration in seconds). Returns the ids that were ours,
    in no particular order.
    """
    if not done:
        return []
    connection = connections[alias]
    if connection.vendor == "postgresql":
        results = [None if d[1] is None else json.dumps(d[1]) for d in done]
        if all(result is None for result in results):
            results = None  # no job returned one: unnest() pads with NULLs, nothing to dump
        params = [[j.id for j, *_ in done], [j.lease_id for j, *_ in done], [d[2] for d in done], results,
                  [d[3] for d in done], worker]
        return [row[0] for row in execute(connection, _SUCCEED, params)]
    ours = []
    with transaction.atomic(using=alias):
        for job, result, at, duration in done:
            if _owned(alias, job).update(status=Status.SUCCEEDED, finished_at=at, result=result,
                                         lease_expires_at=None, error="", traceback=""):
                ours.append(job.id)
                JobExecution.objects.using(alias).create(
                    job_id=job.id, attempt=job.attempts, worker=worker, started_at=job.started_at,
                    finished_at=at, duration=timedelta(seconds=duration), outcome=Outcome.SUCCEEDED)
    return ours


def retry_later(alias: str, job: Claimed, *, error: str, tb: str, run_at: datetime) -> bool:
    """Put a failed job back in the queue for ``run_at``; False if the lease was lost."""
    return bool(_owned(alias, job).update(
        status=Status.QUEUED, run_at=run_at, error=error, traceback=tb, lease_id=None,
        lease_expires_at=None, worker="", finished_at=timezone.now(),
    ))


def dead_letter(alias: str, job: Claimed, *, error: str, tb: str, expired_before: datetime | None = None) -> bool:
    """Mark the job dead and write its dead letter in the same transaction; with
    ``expired_before``, only if its lease still ran out before that time (the sweep)."""
    with transaction.atomic(using=alias):
        now = timezone.now()
        owned = _owned(alias, job)
        if expired_before is not None:
            owned = owned.filter(lease_expires_at__lt=expired_before)
        if not owned.update(status=Status.DEAD, error=error, traceback=tb, lease_expires_at=None, finished_at=now):
            return False
        DeadLetter.objects.using(alias).create(
            job_id=job.id, name=job.name, queue=job.queue, payload=job.payload, priority=job.priority,
            attempts=job.attempts, max_attempts=job.max_attempts, key=job.key, error=error,
            traceback=tb, created_at=now,
        )
    return True


def release(alias: str, jobs: Sequence[Claimed]) -> int:
    """Return unfinished jobs to the queue on shutdown, without counting the attempt."""
    released = 0
    with transaction.atomic(using=alias):
        for job in jobs:
            released += _owned(alias, job).update(
                status=Status.QUEUED, attempts=F("attempts") - 1, lease_id=None,
                lease_expires_at=None, worker="", started_at=None,
            )
    return released


def sweep_expired(alias: str, limit: int = 500) -> tuple[list[Claimed], list[Claimed]]:
    """Rescue jobs whose worker stopped renewing its lease (crashed, killed, partitioned).

    The lost attempt counts: the job is queued again, or dead-lettered when it has no
    attempts left. Returns (requeued, dead). Each change is fenced on the expired lease,
    so two sweeping workers never both act on one job.
    """
    now = timezone.now()
    rows = (Job.objects.using(alias).filter(status=Status.RUNNING, lease_expires_at__lt=now)
            .order_by("lease_expires_at").values_list(*_COLUMNS, "worker", "lease_id")[:limit])
    requeued, dead, history = [], [], []
    for row in rows:
        job = _claimed(row[:-2], row[-1])
        if job.attempts >= job.max_attempts:
            if dead_letter(alias, job, error=WORKER_LOST, tb="", expired_before=now):
                dead.append(job)
        elif _owned(alias, job).filter(lease_expires_at__lt=now).update(
            status=Status.QUEUED, error=WORKER_LOST, lease_id=None, lease_expires_at=None, worker="",
        ):
            requeued.append(job)
        else:
            continue
        history.append(JobExecution(
            job_id=job.id, attempt=job.attempts, worker=row[-2], started_at=job.started_at, finished_at=now,
            duration=now - job.started_at if job.started_at else None, outcome=Outcome.LOST, error=WORKER_LOST,
        ))
    record_executions(alias, history)
    return requeued, dead


def mark_lost_workers(alias: str) -> int:
    """Flag worker rows whose heartbeat is older than three of their leases."""
    now = timezone.now()
    lost = [w.pk for w in Worker.objects.using(alias).filter(lost=False).only("pk", "lease", "last_heartbeat")
            if w.last_heartbeat < now - timedelta(seconds=3 * w.lease)]
    return Worker.objects.using(alias).filter(pk__in=lost).update(lost=True) if lost else 0


def prune_succeeded(alias: str, keep: timedelta, chunk: int = 5000) -> int:
    """Delete succeeded jobs that finished more than ``keep`` ago, in small batches."""
    cutoff = timezone.now() - keep
    total = 0
    while True:
        ids = list(Job.objects.using(alias).filter(status=Status.SUCCEEDED, finished_at__lt=cutoff)
                   .values_list("id", flat=True)[:chunk])
        if not ids:
            return total
        total += Job.objects.using(alias).filter(id__in=ids, status=Status.SUCCEEDED).delete()[1].get(
            Job._meta.label, 0)
        if len(ids) < chunk:
            return total
