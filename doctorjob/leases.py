"""Every state change a worker writes, fenced by the lease it claimed the job under: one
ordered claim, lease renewal, and one finish for every outcome.

A claim gives the claimed jobs a fresh ``lease_id``; every later write matches on
``(id, lease_id, status='running')``. A worker whose lease ran out and was taken over by
another therefore changes nothing: the newer state always wins. Every time compared or written
here is the database server's (``statement_timestamp()``, or ``db.database_now()`` once per
call), never the worker host's, so a host whose clock drifts runs nothing early or late and
takes over no live lease.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from django.db import IntegrityError, connections, transaction
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Concat

from . import trees
from .db import database_now, execute
from .models import DeadLetter, Job, JobDefinition, JobExecution, Outcome, QueueState, Status, new_job
from .registry import registry
from .signals import DEAD, RELAYED, RETRYING, SKIPPED, SUCCEEDED

WORKER_LOST = "worker lost: its lease expired before the job finished"
WORKER_DIED = (
    "worker lost while running this job: its process died (os._exit, a crash, or a signal such as "
    "the OOM killer's SIGKILL)"
)
RELEASED = "released"  # returned to the queue at shutdown, the attempt not counted
_CLAIM_RETRIES = 3

_FIELDS = (
    "id",
    "name",
    "queue",
    "payload",
    "attempts",
    "max_attempts",
    "priority",
    "key",
    "created_at",
    "version",
    "started_at",
    "run_at",
    "lease_expires_at",
    "concurrency_key",
    "error",
    "parent_id",
    "on_failure",
    "progress",
)


def _job(row: Sequence[Any], lease_id: uuid.UUID | None, worker: str, alias: str, status: str = Status.RUNNING) -> Job:
    """The Job a claim returned, as the database holds it (a worker makes thousands a second)."""
    job = new_job(lease_id=lease_id, worker=worker, status=status)
    job.__dict__.update(zip(_FIELDS, row))
    job._state.adding, job._state.db = False, alias
    return job


# -- claim --------------------------------------------------------------------------------------

# PostgreSQL claim, one statement and so one short transaction. `picked` locks up to `limit`
# runnable jobs in (priority desc, run_at, id) order, skipping rows another worker is claiming
# right now (SKIP LOCKED: workers never wait on each other nor take the same row); the status
# check is re-evaluated on each locked row, so a job changed meanwhile is never claimed twice.
# Runnable means: queued, due by the database's clock, in our queues, neither its definition nor
# its queue paused (read in this statement's snapshot: a pause committed before the claim, or
# with the job, always holds), and, for a job with a concurrency key (singleton, per-key), first
# of its key in line with no job of its key running. So a busy key is passed over without
# holding back anything else, a batch never holds two jobs of one key, and a job whose
# definition says on_overlap="skip" is taken only to be marked skipped while its key is busy
# (unless it is a child in a job tree: its parent waits for it, so it waits for its key).
# The partial unique index on running jobs' keys stays the guarantee: should a concurrent claim
# win a key between our snapshot and our write, this statement fails and is run again.
# From then on the lease, not a lock, says who owns the job.
#
# Relayed jobs (doctorjob.relays) are told apart by name and queue, sent as two small arrays:
# a plain worker's claim adds "NOT name = ANY(...) AND NOT queue = ANY(...)" (only when relays
# are configured), a relay's "(name = ANY(...) OR queue = ANY(...))". Both are filters on the
# same ordered index scan, like the pauses, and need no column on the job nor a read of another
# table: the worker knows its registry and settings, and a job's name and queue never change.
#
# The planner is told to read an index that returns jobs in claim order (enable_sort and
# enable_bitmapscan off, for this statement only). Without statistics (a new table, until
# autovacuum first analyses it: a fresh install's first burst) it otherwise guesses that few
# jobs match and picks a bitmap scan and a sort of the whole runnable backlog, for every batch.
# JIT is off too: the planner cannot tell how few rows it reads before the LIMIT is reached, its
# cost estimate passes jit_above_cost, and compiling the statement took 50 ms of every claim.
_CLAIM_PLANNER = (
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('jit', 'off', true)"
)
_KEY_BUSY = (
    "EXISTS (SELECT 1 FROM doctorjob_job AS r WHERE r.concurrency_key = c.concurrency_key "
    "AND r.concurrency_key IS NOT NULL AND r.status = 'running')"
)
_CLAIM = f"""
WITH picked AS (
    SELECT c.id, c.concurrency_key IS NOT NULL AND {_KEY_BUSY} AS busy
    FROM doctorjob_job AS c
    WHERE c.status = 'queued' AND c.run_at <= statement_timestamp() {{filters}}
      AND NOT c.name = ANY(ARRAY(SELECT name FROM doctorjob_jobdefinition WHERE paused))
      AND NOT c.queue = ANY(ARRAY(SELECT name FROM doctorjob_queuestate WHERE paused))
      AND (c.concurrency_key IS NULL
           OR (NOT {_KEY_BUSY} AND NOT EXISTS (
                 SELECT 1 FROM doctorjob_job AS e
                 WHERE e.concurrency_key = c.concurrency_key AND e.status = 'queued'
                   AND e.run_at <= statement_timestamp()
                   AND (e.priority > c.priority OR (e.priority = c.priority AND e.run_at < c.run_at)
                        OR (e.priority = c.priority AND e.run_at = c.run_at AND e.id < c.id))))
           OR (c.name = ANY(%s::text[]) AND c.parent_id IS NULL AND {_KEY_BUSY}))
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE doctorjob_job AS j
    SET status = 'running', attempts = j.attempts + 1, lease_id = %s, worker = %s,
        lease_expires_at = statement_timestamp() + make_interval(secs => %s), started_at = statement_timestamp(),
        finished_at = NULL
    FROM picked AS p WHERE j.id = p.id AND NOT p.busy
    RETURNING {", ".join(f"j.{f}" for f in _FIELDS)}, j.status
), skipped AS (
    UPDATE doctorjob_job AS j
    SET status = 'skipped', finished_at = statement_timestamp(),
        error = 'skipped: another run holding concurrency key ' || quote_literal(j.concurrency_key)
                || ' was in progress'
    FROM picked AS p WHERE j.id = p.id AND p.busy
    RETURNING {", ".join(f"j.{f}" for f in _FIELDS)}, j.status
)
SELECT * FROM claimed UNION ALL SELECT * FROM skipped
"""


class Relayed(NamedTuple):
    """The jobs relays publish: those of these names, and every job of these queues."""

    names: Sequence[str]
    queues: Sequence[str]


class Claim(NamedTuple):
    """What one claim took: the jobs to run, in claim order, under one new lease; the jobs marked
    skipped because their key was busy; and how many rows it picked (a full batch means more
    jobs are probably waiting)."""

    jobs: list[Job]
    skipped: list[Job]
    picked: int


def claim(
    alias: str,
    *,
    worker: str,
    limit: int,
    lease: float,
    queues: Sequence[str] | None = None,
    skip_on_overlap: Sequence[str] = (),
    relayed: Relayed | None = None,
    relay: bool = False,
) -> Claim:
    """Take up to ``limit`` runnable jobs for ``worker``, running under one new lease.

    ``relayed`` names the jobs relays publish (by job name and by queue): a plain worker
    (``relay=False``) passes them over, a relay (``relay=True``) takes only them."""
    relayed = relayed or Relayed((), ())
    for _ in range(_CLAIM_RETRIES):
        try:
            return _claim(alias, worker, limit, lease, queues, skip_on_overlap, relayed, relay)
        except IntegrityError:  # a concurrent claim won a key first (see _CLAIM); the next sees it
            continue
    # Keys contended that hard: nothing this round, but reported as a full batch, so that the
    # worker claims again at once rather than taking the queue for empty.
    return Claim([], [], limit)


def _claim(
    alias: str,
    worker: str,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    skip_on_overlap: Sequence[str],
    relayed: Relayed,
    relay: bool,
) -> Claim:
    lease_id = uuid.uuid4()
    connection = connections[alias]
    if connection.vendor == "postgresql":
        filters, params = "", list[Any]()
        if queues and len(queues) == 1:  # equality lets the (queue, priority, run_at) index order the scan
            filters, params = "AND c.queue = %s", [queues[0]]
        elif queues:
            filters, params = "AND c.queue = ANY(%s)", [list(queues)]
        if relay:
            filters += " AND (c.name = ANY(%s::text[]) OR c.queue = ANY(%s::text[]))"
            params += [list(relayed.names), list(relayed.queues)]
        else:
            for column, values in (("name", relayed.names), ("queue", relayed.queues)):
                if values:
                    filters += f" AND NOT c.{column} = ANY(%s::text[])"
                    params.append(list(values))
        params += [list(skip_on_overlap), limit, lease_id, worker, float(lease)]
        rows = execute(connection, _CLAIM.format(filters=filters), params, prepare=True, planner=_CLAIM_PLANNER)
        # The claim order, for the handlers to run them in: priority descending, then run_at and id
        # (two stable sorts on C key functions: two thirds of the cost of one on a key tuple).
        rows.sort(key=itemgetter(11, 0))
        rows.sort(key=itemgetter(6), reverse=True)
        jobs, skipped = [], []
        for row in rows:
            if row[-1] == Status.RUNNING:
                jobs.append(_job(row[:-1], lease_id, worker, alias))
            else:
                skipped.append(_job(row[:-1], None, "", alias, Status.SKIPPED))
        return Claim(jobs, skipped, len(rows))
    return _claim_portable(alias, worker, limit, lease, queues, skip_on_overlap, lease_id, relayed, relay)


def _claim_portable(
    alias: str,
    worker: str,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    skip_on_overlap: Sequence[str],
    lease_id: uuid.UUID,
    relayed: Relayed,
    relay: bool,
) -> Claim:
    """SQLite and MySQL/MariaDB: the same rules as _CLAIM, through the ORM."""
    connection = connections[alias]
    now = database_now(connection)
    jobs_ = Job.objects.using(alias)
    same_key = jobs_.filter(concurrency_key=OuterRef("concurrency_key"))
    busy = Exists(same_key.filter(status=Status.RUNNING))
    ahead = Exists(
        same_key.filter(status=Status.QUEUED, run_at__lte=now).filter(
            Q(priority__gt=OuterRef("priority"))
            | Q(priority=OuterRef("priority"), run_at__lt=OuterRef("run_at"))
            | Q(priority=OuterRef("priority"), run_at=OuterRef("run_at"), id__lt=OuterRef("id"))
        )
    )
    runnable = (
        jobs_.filter(status=Status.QUEUED, run_at__lte=now)
        .exclude(name__in=JobDefinition.objects.using(alias).filter(paused=True).values("name"))
        .exclude(queue__in=QueueState.objects.using(alias).filter(paused=True).values("name"))
    )
    if queues:
        runnable = runnable.filter(queue__in=queues)
    if relay:
        runnable = runnable.filter(Q(name__in=relayed.names) | Q(queue__in=relayed.queues))
    else:
        runnable = runnable.exclude(name__in=relayed.names).exclude(queue__in=relayed.queues)
    free = runnable.filter(Q(concurrency_key__isnull=True) | (~busy & ~ahead))
    overlapping = runnable.filter(
        busy, concurrency_key__isnull=False, name__in=list(skip_on_overlap), parent__isnull=True
    )
    order = ("-priority", "run_at", "id")
    changes = claimed_fields(lease_id, worker, now, lease)
    skip = dict(
        status=Status.SKIPPED,
        finished_at=now,
        error=Concat(
            Value("skipped: another run holding concurrency key '"), F("concurrency_key"), Value("' was in progress")
        ),
    )
    skipped_ids: list[int] = []
    if connection.features.has_select_for_update_skip_locked:
        # MySQL/MariaDB: SKIP LOCKED in a short transaction: read the ids, then mark them.
        with transaction.atomic(using=alias):
            if skip_on_overlap:
                skipped_ids = list(
                    overlapping.select_for_update(skip_locked=True)
                    .order_by(*order)
                    .values_list("id", flat=True)[:limit]
                )
                jobs_.filter(id__in=skipped_ids, status=Status.QUEUED).update(**skip)
            ids = list(
                free.select_for_update(skip_locked=True)
                .order_by(*order)
                .values_list("id", flat=True)[: limit - len(skipped_ids)]
            )
            jobs_.filter(id__in=ids, status=Status.QUEUED).update(**changes)
    else:
        # SQLite: each conditional UPDATE is atomic (writers are serialised) and reads its
        # subquery before writing, so two workers never both flip one row and a batch never
        # holds two jobs of one key.
        if skip_on_overlap:
            skipped_ids = list(overlapping.order_by(*order).values_list("id", flat=True)[:limit])
            jobs_.filter(id__in=skipped_ids, status=Status.QUEUED).update(**skip)
        jobs_.filter(
            id__in=free.order_by(*order).values("id")[: limit - len(skipped_ids)], status=Status.QUEUED
        ).update(**changes)
    jobs = [
        _job(row, lease_id, worker, alias)
        for row in jobs_.filter(lease_id=lease_id, status=Status.RUNNING).order_by(*order).values_list(*_FIELDS)
    ]
    skipped = [
        _job(row, None, "", alias, Status.SKIPPED)
        for row in jobs_.filter(id__in=skipped_ids, status=Status.SKIPPED).values_list(*_FIELDS)
    ]
    return Claim(jobs, skipped, len(jobs) + len(skipped))


def claimed_fields(lease_id: uuid.UUID, worker: str, now: datetime, lease: float) -> dict[str, Any]:
    """What an ORM claim writes on a queued job to make it ``worker``'s, running under ``lease_id``."""
    return dict(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        lease_id=lease_id,
        worker=worker,
        lease_expires_at=now + timedelta(seconds=lease),
        started_at=now,
        finished_at=None,
    )


# -- renew --------------------------------------------------------------------------------------


def renew(alias: str, jobs: Iterable[Job], lease: float) -> int:
    """Push the lease deadline of every job in ``jobs`` that we still hold to ``lease`` seconds
    from the database's now; returns how many."""
    jobs = list(jobs)
    if not jobs:
        return 0
    connection = connections[alias]
    ids, lease_ids = [j.id for j in jobs], list({j.lease_id for j in jobs})
    if connection.vendor == "postgresql":
        renewed: int = execute(
            connection,
            "UPDATE doctorjob_job "
            "SET lease_expires_at = statement_timestamp() + make_interval(secs => %s) "
            "WHERE id = ANY(%s) AND lease_id = ANY(%s) AND status = 'running'",
            [float(lease), ids, lease_ids],
        )
        return renewed
    return (
        Job.objects.using(alias)
        .filter(id__in=ids, lease_id__in=lease_ids, status=Status.RUNNING)
        .update(lease_expires_at=database_now(connection) + timedelta(seconds=lease))
    )


# -- finish -------------------------------------------------------------------------------------


class Finish(NamedTuple):
    """One outcome to record for a job we claimed.

    ``outcome``: succeeded, relayed (a relay's broker confirmed it), retrying (queued again
    ``delay`` seconds from now), dead (with a dead letter), skipped, or released (queued again
    at shutdown, the attempt not counted).
    ``expired`` is the lease sweep's: only if the lease has run out, the attempt recorded lost,
    and a job queued again keeps its place in line (its ``run_at``). ``lost`` is the watchdog's:
    the attempt is recorded lost (its worker died running it), and retried after the backoff.
    """

    job: Job
    outcome: str
    result: Any = None
    error: str = ""
    traceback: str = ""
    delay: float = 0.0
    duration: float | None = None
    worker: str = ""
    expired: bool = False
    lost: bool = False


def retry_or_dead(job: Job) -> str:
    """Where a failed attempt of ``job`` leads: another attempt, or the dead letters."""
    return RETRYING if job.attempts < job.max_attempts else DEAD


def failed(
    job: Job, outcome: str, error: str, *, worker: str, traceback: str = "", duration: float = 0.0, lost: bool = False
) -> Finish:
    """A failed attempt to record: ``outcome`` retrying (after the job type's backoff) or dead."""
    job_type = registry.get(job.name)
    delay = job_type.retry_delay(job.attempts) if outcome == RETRYING and job_type else 0.0
    return Finish(
        job, outcome, error=error, traceback=traceback, delay=delay, duration=duration, worker=worker, lost=lost
    )


# Every outcome, for many jobs, in one statement: each job changes only if our lease still holds
# it (and, for the sweep, only if that lease has run out by the database's clock), and exactly
# the jobs that changed get their execution history row and, when dead, their dead letter.
_FINISH = """
WITH v AS (
    SELECT * FROM unnest(%b::bigint[], %b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[],
                         %b::float8[], %b::float8[], %b::text[], %b::bool[], %b::bool[])
        AS v(id, lease_id, outcome, result, error, traceback, delay, duration, worker, expired, lost)
), done AS (
    UPDATE doctorjob_job AS j SET
        status = CASE WHEN v.outcome IN ('retrying', 'released') THEN 'queued' ELSE v.outcome END,
        attempts = CASE WHEN v.outcome = 'released' THEN j.attempts - 1 ELSE j.attempts END,
        run_at = CASE WHEN v.outcome = 'retrying' AND v.expired IS NOT TRUE
                      THEN statement_timestamp() + make_interval(secs => coalesce(v.delay, 0)) ELSE j.run_at END,
        started_at = CASE WHEN v.outcome = 'released' THEN NULL ELSE j.started_at END,
        finished_at = CASE WHEN v.outcome = 'released' THEN j.finished_at ELSE statement_timestamp() END,
        result = CASE WHEN v.outcome = 'succeeded' THEN v.result::jsonb ELSE j.result END,
        error = CASE WHEN v.outcome = 'released' THEN j.error ELSE coalesce(v.error, '') END,
        traceback = CASE WHEN v.outcome = 'released' THEN j.traceback ELSE coalesce(v.traceback, '') END,
        lease_id = CASE WHEN v.outcome IN ('retrying', 'released') THEN NULL ELSE j.lease_id END,
        worker = CASE WHEN v.outcome IN ('retrying', 'released') THEN '' ELSE j.worker END,
        relayed_at = CASE WHEN v.outcome = 'relayed' THEN statement_timestamp() ELSE j.relayed_at END,
        lease_expires_at = NULL
    FROM v
    WHERE j.id = v.id AND j.lease_id = v.lease_id AND j.status = 'running'
      AND (v.expired IS NOT TRUE OR j.lease_expires_at < statement_timestamp())
    RETURNING j.id, j.name, j.queue, j.payload, j.priority, j.attempts, j.max_attempts, j.key, j.started_at,
              j.finished_at, j.run_at, j.error, j.traceback, v.outcome, v.duration, v.worker,
              v.expired OR v.lost AS lost, v.lease_id
), history AS (
    INSERT INTO doctorjob_jobexecution (job_id, attempt, worker, started_at, finished_at, duration, outcome, error,
                                        traceback)
    SELECT id, attempts, worker, started_at, finished_at,
           coalesce(make_interval(secs => duration), finished_at - started_at),
           CASE WHEN lost THEN 'lost' WHEN outcome IN ('succeeded', 'skipped', 'relayed') THEN outcome
                ELSE 'failed' END,
           error, traceback
    FROM done WHERE outcome <> 'released'
), letters AS (
    INSERT INTO doctorjob_deadletter (job_id, name, queue, payload, priority, attempts, max_attempts, key, error,
                                      traceback, created_at)
    SELECT id, name, queue, payload, priority, attempts, max_attempts, key, error, traceback, finished_at
    FROM done WHERE outcome = 'dead'
)
SELECT id, lease_id, attempts, run_at, finished_at FROM done
"""
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def finish(alias: str, items: Sequence[Finish]) -> list[Finish]:
    """Record outcomes, each only if our lease still holds the job; return the items that did.

    Their jobs are updated in place to what is stored (status, attempts, run_at, error, ...), for
    the ``job_finished`` receivers.
    """
    if not items:
        return []
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return _finish_portable(alias, items)
    results = [None if f.result is None else _to_json(f.result) for f in items]
    params = [
        [f.job.id for f in items],
        [f.job.lease_id for f in items],
        [f.outcome for f in items],
        _or_null(results),
        _or_null([f.error for f in items]),
        _or_null([f.traceback for f in items]),
        _or_null([f.delay for f in items]),
        [f.duration for f in items],
        [f.worker for f in items],
        _or_null([f.expired for f in items]),
        _or_null([f.lost for f in items]),
    ]
    # A child's outcome and its parent's settlement commit together (see trees.py); jobs outside
    # a tree, nearly all of them, finish in one statement and no transaction.
    tree = any(f.job.parent_id is not None and f.outcome not in (RETRYING, RELEASED) for f in items)
    with transaction.atomic(using=alias) if tree else nullcontext():
        # By id and lease: a late outcome of an earlier claim of the same job is not ours.
        stored = {(row[0], row[1]): row for row in execute(connection, _FINISH, params, prepare=True)}
        ours = []
        for f in items:
            row = stored.get((f.job.id, f.job.lease_id))
            if row is not None:
                _apply(f, attempts=row[2], run_at=row[3], finished_at=row[4])
                ours.append(f)
        if tree:
            trees.settle(alias, [f.job for f in ours if f.outcome not in (RETRYING, RELEASED)])
    return ours


def _or_null(values: list[Any]) -> list[Any] | None:
    """A column of _FINISH, or NULL when every value is empty: unnest() pads a NULL array with
    NULLs, and a batch of successes then sends no error, traceback, delay or expired column."""
    return values if any(values) else None


def _apply(f: Finish, **stored: Any) -> None:
    """Bring the Job object in line with what ``finish`` stored."""
    job, requeued = f.job, f.outcome in (RETRYING, RELEASED)
    job.__dict__.update(stored)
    job.status = Status.QUEUED if requeued else f.outcome
    if f.outcome != RELEASED:
        job.error, job.traceback = f.error, f.traceback
    if f.outcome == SUCCEEDED:
        job.result = f.result
    if f.outcome == RELAYED:
        job.relayed_at = job.finished_at
    if f.outcome == RELEASED:
        job.started_at = None
    job.lease_expires_at = None
    if requeued:
        job.lease_id, job.worker = None, ""


def _finish_portable(alias: str, items: Sequence[Finish]) -> list[Finish]:
    """SQLite and MySQL/MariaDB: what _FINISH does, one job at a time in one transaction."""
    now = database_now(connections[alias])
    jobs, ours, history, letters = Job.objects.using(alias), [], [], []
    with transaction.atomic(using=alias):
        for f in items:
            job = f.job
            owned = jobs.filter(id=job.id, lease_id=job.lease_id, status=Status.RUNNING)
            if f.expired:
                owned = owned.filter(lease_expires_at__lt=now)
            if f.outcome == RELEASED:
                changes = dict(status=Status.QUEUED, attempts=F("attempts") - 1, started_at=None)
                stored: dict[str, Any] = dict(attempts=job.attempts - 1)
            else:
                retry_later = f.outcome == RETRYING and not f.expired
                run_at = now + timedelta(seconds=f.delay) if retry_later else job.run_at
                changes = dict(
                    status=Status.QUEUED if f.outcome == RETRYING else f.outcome,
                    run_at=run_at,
                    finished_at=now,
                    error=f.error,
                    traceback=f.traceback,
                )
                if f.outcome == SUCCEEDED:
                    changes["result"] = f.result
                if f.outcome == RELAYED:
                    changes["relayed_at"] = now
                stored = dict(run_at=run_at, finished_at=now)
            if f.outcome in (RETRYING, RELEASED):
                changes.update(lease_id=None, worker="")
            if not owned.update(lease_expires_at=None, **changes):
                continue
            _apply(f, **stored)
            ours.append(f)
            if f.outcome != RELEASED:
                history.append(
                    JobExecution(
                        job_id=job.id,
                        attempt=job.attempts,
                        worker=f.worker,
                        started_at=job.started_at,
                        finished_at=now,
                        outcome=Outcome.LOST
                        if f.expired or f.lost
                        else (f.outcome if f.outcome in (SUCCEEDED, SKIPPED, RELAYED) else Outcome.FAILED),
                        duration=timedelta(seconds=f.duration)
                        if f.duration is not None
                        else (now - job.started_at if job.started_at else None),
                        error=f.error,
                        traceback=f.traceback,
                    )
                )
            if f.outcome == DEAD:
                letters.append(
                    DeadLetter(
                        job_id=job.id,
                        name=job.name,
                        queue=job.queue,
                        payload=job.payload,
                        priority=job.priority,
                        attempts=job.attempts,
                        max_attempts=job.max_attempts,
                        key=job.key,
                        error=f.error,
                        traceback=f.traceback,
                        created_at=now,
                    )
                )
        JobExecution.objects.using(alias).bulk_create(history)
        DeadLetter.objects.using(alias).bulk_create(letters)
        trees.settle(alias, [f.job for f in ours if f.outcome not in (RETRYING, RELEASED)])
    return ours


def expired(alias: str, limit: int = 500) -> list[Job]:
    """Running jobs whose lease ran out by the database's clock (their worker crashed, was
    killed or cut off), oldest deadline first, for the sweep to finish as lost."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        rows = execute(
            connection,
            f"SELECT {', '.join(_FIELDS)}, lease_id, worker FROM doctorjob_job "
            "WHERE status = 'running' AND lease_expires_at < statement_timestamp() "
            "ORDER BY lease_expires_at LIMIT %s",
            [limit],
        )
    else:
        rows = (
            Job.objects.using(alias)
            .filter(status=Status.RUNNING, lease_expires_at__lt=database_now(connection))
            .order_by("lease_expires_at")
            .values_list(*_FIELDS, "lease_id", "worker")[:limit]
        )
    return [_job(row[:-2], row[-2], row[-1], alias) for row in rows]


def held_by(alias: str, worker: str) -> list[Job]:
    """Running jobs that ``worker`` claimed, for its watchdog to finish once its process died."""
    rows = (
        Job.objects.using(alias)
        .filter(status=Status.RUNNING, worker=worker)
        .order_by("id")
        .values_list(*_FIELDS, "lease_id")
    )
    return [_job(row[:-1], row[-1], worker, alias) for row in rows]
