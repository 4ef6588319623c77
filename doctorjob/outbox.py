"""enqueue / enqueue_many: validate everything first, then write the rows on the caller's
connection, inside the caller's transaction (never ``on_commit``): the job commits with the
caller's data or not at all."""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, OperationalError, connections, router, transaction
from django.utils import timezone

from .conf import settings
from .db import execute, missing_table, not_migrated
from .exceptions import InvalidEnqueue, InvalidPayload, NotMigrated, TransactionRequired
from .models import Job, Status, new_job
from .payloads import check_json, text_problem
from .registry import QUEUE_NAME, QUEUE_RULE, JobType, get_job_type
from .signals import job_enqueued
from .trees import Child, notify

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

CHANNEL = "doctorjob"

_ENQUEUE_ARGS = {"job", "payload", "key", "delay", "run_at", "priority", "queue", "max_attempts"}


def enqueue(
    job: str | Callable[..., Any] | JobType,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: timedelta | float | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    children: Iterable[Child] = (),
    using: str | None = None,
) -> Job:
    """Add a job in the current transaction and return it.

    With ``key``, a job already holding that key is returned instead and nothing is written.
    With ``children`` (``Child`` objects, which may have children of their own), the whole tree
    is written, or nothing of it: the job waits until its children have finished.
    Sends ``job_enqueued`` once the row is written, in the caller's transaction.
    """
    row = build_job(
        job, payload, key=key, delay=delay, run_at=run_at, priority=priority, queue=queue, max_attempts=max_attempts
    )
    if children:
        return _write_tree(row, children, using)
    written = _write([row], using)[0]
    if job_enqueued.receivers and written is row:  # not for a job that already held the key
        job_enqueued.send(sender=Job, job=written)
    return written


def enqueue_many(items: Iterable[Any], *, using: str | None = None) -> list[Job]:
    """Add many jobs with as few INSERT statements as the database allows.

    Each item is a ``(job, payload)`` pair or a dict of ``enqueue()``'s arguments. Every item is
    validated before anything is written.
    """
    now, rows = timezone.now(), []
    # Tens of thousands of new Job objects make the cyclic garbage collector sweep the whole heap
    # several times over (a third of the time spent building 50,000 jobs); they form no cycles,
    # so it waits until they are built. Only this loop: the INSERT may wait on a lock.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for index, item in enumerate(items):
            if isinstance(item, (tuple, list)) and len(item) == 2:
                rows.append(build_job(item[0], item[1], now=now))
            elif isinstance(item, Mapping):
                unknown = set(item) - _ENQUEUE_ARGS
                if unknown or "job" not in item:
                    problem = f"unknown key(s) {sorted(unknown)}" if unknown else "no 'job' key"
                    raise InvalidEnqueue(f"enqueue_many item {index}: {problem}")
                kwargs = dict(item)
                rows.append(build_job(kwargs.pop("job"), kwargs.pop("payload", None), now=now, **kwargs))
            else:
                raise InvalidEnqueue(
                    f"enqueue_many item {index}: expected a (job, payload) pair or a dict, got {item!r:.80}"
                )
    finally:
        if collecting:
            gc.enable()
    return _write(rows, using) if rows else []


def build_job(
    job: Any,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: timedelta | float | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> Job:
    """Validate the arguments and return an unsaved Job; raise before anything is written."""
    job_type = get_job_type(job)
    payload = {} if payload is None else payload
    check_json(payload, job_type.name)
    job_type.validate(payload)
    now = now or timezone.now()
    if delay is not None and run_at is not None:
        raise InvalidEnqueue(f"job '{job_type.name}': pass either delay or run_at, not both")
    if delay is not None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool) and math.isfinite(delay):
            seconds = float(delay)
        else:
            raise InvalidEnqueue(f"job '{job_type.name}': delay must be a timedelta or seconds, got {delay!r}")
        if seconds < 0:
            raise InvalidEnqueue(f"job '{job_type.name}': delay must not be negative, got {delay!r}")
        try:
            run_at = now + timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidEnqueue(f"job '{job_type.name}': delay {delay!r} runs past the year 9999") from None
    elif run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidEnqueue(f"job '{job_type.name}': run_at must be a datetime, got {run_at!r}")
        if timezone.is_naive(run_at):
            raise InvalidEnqueue(f"job '{job_type.name}': run_at must be timezone-aware, got {run_at!r}")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 255 or text_problem(key)):
        raise InvalidEnqueue(
            f"job '{job_type.name}': key must be a non-empty string of at most 255 characters "
            f"with no NUL character or lone surrogate, got {key!r:.80}"
        )
    if priority is not None and not _int32(priority):
        raise InvalidEnqueue(
            f"job '{job_type.name}': priority must be an integer from -2147483648 to 2147483647, got {priority!r:.80}"
        )
    if queue is not None and (not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue)):
        raise InvalidEnqueue(f"job '{job_type.name}': {QUEUE_RULE}, got {queue!r:.80}")
    if max_attempts is not None and not (_int32(max_attempts) and max_attempts >= 1):
        raise InvalidEnqueue(
            f"job '{job_type.name}': max_attempts must be an integer from 1 to 2147483647, got {max_attempts!r:.80}"
        )
    concurrency_key = job_type.key_for(payload)
    if concurrency_key is not None and (len(concurrency_key) > 255 or text_problem(concurrency_key)):
        raise InvalidPayload(
            f"concurrency key of job '{job_type.name}' must be at most 255 characters with no NUL "
            f"character or lone surrogate, got {concurrency_key!r:.80}"
        )
    return new_job(
        name=job_type.name,
        version=settings.JOBS.get(job_type.name, {}).get("version", job_type.version),
        concurrency_key=concurrency_key,
        queue=queue or job_type.queue,
        payload=payload,
        priority=job_type.priority if priority is None else priority,
        run_at=run_at or now,
        max_attempts=max_attempts or job_type.max_attempts,
        key=key,
        created_at=now,
    )


def _int32(value: Any) -> bool:
    """An integer the databases' integer columns hold."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


def _write(rows: list[Job], using: str | None) -> list[Job]:
    alias = _alias(using)
    try:
        if connections[alias].vendor == "postgresql":
            return _write_postgresql(rows, connections[alias])
        return _write_portable(rows, alias)
    except DatabaseError as exc:
        if missing_table(exc):
            raise NotMigrated(not_migrated(alias)) from exc
        raise


def _alias(using: str | None) -> str:
    """The database to write jobs to; refuse autocommit if DOCTORJOB['REQUIRE_TRANSACTION']."""
    alias = using or router.db_for_write(Job)
    if settings.REQUIRE_TRANSACTION and connections[alias].get_autocommit():
        raise TransactionRequired(
            "enqueue() needs a transaction: call it inside transaction.atomic() "
            "(DOCTORJOB['REQUIRE_TRANSACTION'] is on)"
        )
    return alias


def _write_tree(root: Job, children: Iterable[Child], using: str | None) -> Job:
    """Write a job and its children, level by level, in one atomic block (a savepoint inside
    the caller's transaction): every node is validated before the first row is written, and
    any error leaves nothing of the tree.

    A parent is written ``waiting`` with the count of its children. A node whose key is already
    held is not written, nor are its children: the job holding the key is not this parent's
    child, and a parent left with no children is queued at once.
    """
    Tree = tuple[Job, list[Any]]  # (row, subtrees)

    def build(nodes: Iterable[Child], path: str) -> list[Tree]:
        built: list[Tree] = []
        for index, node in enumerate(nodes):
            where = f"{path}[{index}]"
            if not isinstance(node, Child):
                raise InvalidEnqueue(f"{where}: children must be doctorjob.Child objects, got {node!r:.80}")
            try:
                row = build_job(node.job, node.payload, **node.options)
            except (InvalidEnqueue, InvalidPayload) as exc:
                raise type(exc)(f"{where}: {exc}") from None
            row.on_failure = node.on_failure
            built.append((row, build(node.children, f"{where}.children")))
        return built

    if isinstance(children, (str, bytes, Mapping)):
        raise InvalidEnqueue(f"children must be an iterable of doctorjob.Child objects, got {children!r:.80}")
    tree: Tree = (root, build(children, "children"))
    alias = _alias(using)
    written: list[Job] = []
    result = root
    try:
        with transaction.atomic(using=alias):
            level = [tree]
            while level:
                for row, subtrees in level:
                    if subtrees:
                        row.status, row.pending_children = Status.WAITING, len(subtrees)
                rows = _write_portable([row for row, _ in level], alias)
                if level[0] is tree:
                    result = rows[0]  # the root, or the job that already held its key
                next_level, short = [], dict[int, int]()
                for (row, subtrees), job in zip(level, rows):
                    if job is not row:  # its key was held: not written, and not its parent's child
                        if row.parent_id is not None:
                            short[row.parent_id] = short.get(row.parent_id, 0) + 1
                        continue
                    written.append(job)
                    for child, grandchildren in subtrees:
                        child.parent_id = job.pk
                        next_level.append((child, grandchildren))
                for parent_id, count in short.items():
                    parent = next(j for j in written if j.pk == parent_id)
                    parent.pending_children = (parent.pending_children or 0) - count
                    if not parent.pending_children:
                        parent.status, parent.pending_children = Status.QUEUED, None
                    Job.objects.using(alias).filter(pk=parent_id).update(
                        status=parent.status, pending_children=parent.pending_children
                    )
                level = next_level
            queues = {j.queue for j in written if j.status == Status.QUEUED and j.run_at <= j.created_at}
            if queues:
                notify(alias, queues)
    except DatabaseError as exc:
        if missing_table(exc):
            raise NotMigrated(not_migrated(alias)) from exc
        raise
    if job_enqueued.receivers:
        for job in written:
            job_enqueued.send(sender=Job, job=job)
    return result


# One statement, whatever the number of rows. The payloads travel as one JSON array, encoded in
# a single call and expanded by jsonb_array_elements() (a third faster, client and server, than
# 50,000 separately encoded documents in a jsonb[]); each other column is one array parameter
# zipped alongside by ROWS FROM, or one scalar when every row has the same value, as most columns
# of a batch do (dumping a 50,000-element array costs the client ~30 ms). So PostgreSQL's 65,535
# bind-parameter limit never applies. In the same statement, the NOTIFY that wakes workers: it
# is delivered only when the caller's transaction commits, so a worker never hears of a job it
# cannot see, and it is sent once per queue, only if a row was inserted (the subquery runs once,
# for the first row returned). With idempotency keys, ON CONFLICT (key) DO NOTHING makes a
# duplicate key a no-op instead of an error that would abort the caller's transaction; without
# keys nothing can conflict. The ids come back in insertion order, as Django's bulk_create()
# relies on RETURNING doing on PostgreSQL.
_INSERT = """
WITH inserted AS (
    INSERT INTO doctorjob_job (payload, name, queue, priority, run_at, max_attempts, key, created_at,
                               version, concurrency_key, status, attempts, worker, error, traceback)
    SELECT r.payload, {values}, 'queued', 0, '', '', ''
    FROM ROWS FROM (jsonb_array_elements(%s::jsonb){arrays}) AS r(payload{names})
    {conflict}
    RETURNING id, key{notify}
)
SELECT array_agg(id), array_agg(key) FROM inserted
"""
# A jsonb value stops at 256 MiB: a batch whose payloads encode to more is written in halves.
BATCH_JSON_LIMIT = 64 * 2**20
_COLUMNS = (
    ("name", "text"),
    ("queue", "text"),
    ("priority", "int"),
    ("run_at", "timestamptz"),
    ("max_attempts", "int"),
    ("key", "text"),
    ("created_at", "timestamptz"),
    ("version", "int"),
    ("concurrency_key", "text"),
)
_NOTIFY = ", (SELECT count(pg_notify('" + CHANNEL + "', q)) FROM unnest(%b::text[]) AS q)"
_CONFLICT = "ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING"  # the partial unique index
# The same for the commonest case, one job: plain VALUES plan faster than unnest(), and the
# statement is prepared once per connection (see db.may_prepare). By (key given, NOTIFY).
_INSERT_ONE = {
    (keyed, notify): f"""
INSERT INTO doctorjob_job (name, queue, payload, status, priority, run_at, attempts, max_attempts,
                           key, created_at, version, concurrency_key, worker, error, traceback)
VALUES (%s, %s, %s::jsonb, 'queued', %s, %s, 0, %s, %s, %s, %s, %s, '', '', '')
{_CONFLICT if keyed else ""}
RETURNING id, key{", pg_notify('" + CHANNEL + "', queue)" if notify else ""}
"""
    for keyed in (False, True)
    for notify in (False, True)
}
# Compact JSON, with the encoder built once (json.dumps with arguments builds one per call).
_to_json = json.JSONEncoder(separators=(",", ":")).encode
_payload = attrgetter("payload")


def _write_postgresql(rows: list[Job], connection: BaseDatabaseWrapper) -> list[Job]:
    # A job wakes workers if it is runnable when enqueued (created_at), not if delayed.
    keyed = any(row.key is not None for row in rows)
    if len(rows) == 1:
        row = rows[0]
        payload = _to_json(row.payload)
        if len(payload) > settings.MAX_PAYLOAD_BYTES:
            _refuse_size(row, payload)
        params = [
            row.name,
            row.queue,
            payload,
            row.priority,
            row.run_at,
            row.max_attempts,
            row.key,
            row.created_at,
            row.version,
            row.concurrency_key,
        ]
        sql = _INSERT_ONE[keyed, settings.NOTIFY and row.run_at <= row.created_at]
        returned = execute(connection, sql, params, prepare=True)
    else:
        payloads = _to_json([*map(_payload, rows)])  # ASCII: its length is its size in bytes
        if len(payloads) > settings.MAX_PAYLOAD_BYTES:
            _check_sizes(rows)
        if len(payloads) > BATCH_JSON_LIMIT:
            half = len(rows) // 2
            return _write_postgresql(rows[:half], connection) + _write_postgresql(rows[half:], connection)
        values, scalars, arrays, names, columns = [], [], "", "", []
        for name, sql_type in _COLUMNS:
            column = [*map(attrgetter(name), rows)]
            if column.count(column[0]) == len(column):
                values.append(f"%b::{sql_type}")
                scalars.append(column[0])
            else:
                values.append(f"r.{name}")
                arrays, names = f"{arrays}, unnest(%b::{sql_type}[])", f"{names}, {name}"
                columns.append(column)
        queues = sorted({r.queue for r in rows if r.run_at <= r.created_at}) if settings.NOTIFY else []
        sql = _INSERT.format(
            values=", ".join(values),
            arrays=arrays,
            names=names,
            conflict=_CONFLICT if keyed else "",
            notify=_NOTIFY if queues else "",
        )
        ids, keys = execute(connection, sql, [*scalars, payloads, *columns, *([queues] if queues else [])])[0]
        returned = zip(ids or (), keys or ())  # array_agg() over no rows is NULL
    alias = connection.alias
    if not keyed:  # nothing could conflict: one row back per job, in order
        for row, (pk, *_) in zip(rows, returned):
            row.id, row._state.adding, row._state.db = pk, False, alias
        return rows
    returned = list(returned)
    by_key = {key: pk for pk, key, *_ in returned if key is not None}
    keyless = iter(pk for pk, key, *_ in returned if key is None)
    result: list[Job] = []
    holders: dict[str, Job] = {}
    missing: set[str] = set()
    for row in rows:
        if row.key is None:
            row.id = next(keyless)
        elif row.key in holders:  # a key repeated in the batch: the job its first use wrote
            result.append(holders[row.key])
            continue
        else:
            holders[row.key], row.id = row, by_key.get(row.key)
            if row.id is None:
                missing.add(row.key)
        row._state.adding, row._state.db = False, alias
        result.append(row)
    if missing:  # keys already held by committed jobs: hand those back
        existing = {j.key: j for j in Job.objects.using(alias).filter(key__in=missing)}
        result = [existing.get(row.key, row) if row.id is None else row for row in result]
    return result


def _check_sizes(rows: list[Job]) -> None:
    """Raise InvalidPayload for the first job whose payload passes MAX_PAYLOAD_BYTES."""
    for row in rows:
        payload = _to_json(row.payload)
        if len(payload) > settings.MAX_PAYLOAD_BYTES:
            _refuse_size(row, payload)


def _refuse_size(row: Job, payload: str) -> None:
    raise InvalidPayload(
        f"payload of job '{row.name}' is {len(payload):,} bytes of JSON; "
        f"DOCTORJOB['MAX_PAYLOAD_BYTES'] allows {settings.MAX_PAYLOAD_BYTES:,}"
    )


def _write_portable(rows: list[Job], alias: str) -> list[Job]:
    """SQLite and MySQL: plain ORM inserts; a duplicate key is caught in a savepoint."""
    _check_sizes(rows)
    jobs = Job.objects.using(alias)
    keyless = [row for row in rows if row.key is None]
    if len(keyless) > 1:
        jobs.bulk_create(keyless)
    elif keyless:
        keyless[0].save(using=alias, force_insert=True)
    result = []
    for row in rows:
        if row.key is not None:
            # A key this transaction can already see (committed, or enqueued by this very
            # transaction) is found without taking any lock.
            row = jobs.filter(key=row.key).first() or _insert_keyed(row, alias)
        result.append(row)
    return result


def _insert_keyed(row: Job, alias: str) -> Job:
    """Insert a keyed job, or return the job that holds its key.

    On MySQL/MariaDB the insert runs under a named lock on the key. Without it, callers that
    find the key held by an uncommitted insert each wait for a shared lock on it; if the holder
    rolls back, they all try to upgrade to insert, and InnoDB breaks the deadlock by rolling back
    every caller's transaction but one (error 1213). Under the named lock at most one caller waits
    on the row, and the others wait their turn for the lock. It is held for the insert alone, so
    one caller never holds two (no cycle among the named locks).
    """
    connection = connections[alias]
    lock = None
    if connection.vendor == "mysql":
        # Lock names are at most 64 characters; a key is up to 255.
        lock = "doctorjob:" + hashlib.sha1(str(row.key).encode()).hexdigest()
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, @@innodb_lock_wait_timeout)", [lock])
            if cursor.fetchone()[0] != 1:
                raise OperationalError(f"lock wait timeout exceeded waiting for key {row.key!r}")
    try:
        with transaction.atomic(using=alias):
            row.save(using=alias, force_insert=True)
        return row
    except IntegrityError:
        return Job.objects.using(alias).get(key=row.key)
    finally:
        if lock:
            with connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [lock])
