"""The chores one elected worker does for the whole cluster: rescue jobs whose lease ran out,
mark workers that stopped beating as lost, prune succeeded jobs past their retention, enqueue
due schedule ticks, and add the latest attempts to the metrics' totals.

They run on a thread of their own with their own connection and timers, never on the thread
that claims jobs and renews leases, so a long prune cannot make a worker lose its leases. At
most one worker does them at a time: the holder of a row lease in ``MaintenanceLease``
(session advisory locks would not survive PgBouncer's transaction pooling). Each chore is
safe should two workers ever overlap (a holder stalled past its lease): the sweep is fenced
on the expired lease, pruning deletes only what is due, and a tick is recorded on its
definition in the transaction that enqueues it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connections, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from . import leases, schedule, totals
from .conf import settings
from .db import close_quietly, database_now, execute
from .models import Job, JobDefinition, MaintenanceLease, QueueState, Status, Worker
from .outbox import enqueue
from .registry import registry
from .trees import delete_jobs

logger = logging.getLogger("doctorjob")

LEASE_NAME = "maintenance"
SWEEP_BATCH = 500
PRUNE_BATCH = 2000  # rows deleted per transaction: short enough never to hold up others' writes
PRUNE_EVERY = 60.0
TICK_EVERY = 0.25  # due schedule ticks are checked this often (6-field schedules tick each second)


def elect(alias: str, holder: str, ttl: float) -> bool:
    """Take or keep the maintenance lease for ``ttl`` seconds of the database's clock; True if
    ``holder`` has it."""
    now = database_now(connections[alias])
    leases_ = MaintenanceLease.objects.using(alias).filter(name=LEASE_NAME)
    expires = now + timedelta(seconds=ttl)
    if leases_.filter(Q(holder=holder) | Q(expires_at__lt=now)).update(holder=holder, expires_at=expires):
        return True
    try:
        with transaction.atomic(using=alias):
            MaintenanceLease.objects.using(alias).create(name=LEASE_NAME, holder=holder, expires_at=expires)
        return True
    except IntegrityError:  # another worker holds it, or took it this very moment
        return False


def resign(alias: str, holder: str) -> None:
    """Give the maintenance lease up at a clean exit, so another worker takes over at once."""
    MaintenanceLease.objects.using(alias).filter(name=LEASE_NAME, holder=holder).delete()


def sweep_expired(alias: str) -> list[leases.Finish]:
    """Finish jobs whose worker stopped renewing their lease: the lost attempt counts, and the
    job is queued again now, or dead-lettered when it has no attempts left. Fenced on the
    expired lease, so a worker that renews at this very moment keeps its job."""
    done = []
    while True:
        lost = leases.expired(alias, SWEEP_BATCH)
        done += leases.finish(
            alias,
            [
                leases.Finish(
                    job,
                    leases.retry_or_dead(job),
                    error=leases.WORKER_LOST,
                    worker=job.worker,
                    expired=True,
                )
                for job in lost
            ],
        )
        if len(lost) < SWEEP_BATCH:
            return done


def mark_lost_workers(alias: str) -> int:
    """Flag worker rows whose heartbeat is older than three of their leases."""
    now = database_now(connections[alias])
    lost = [
        w.pk
        for w in Worker.objects.using(alias).filter(lost=False).only("pk", "lease", "last_heartbeat")
        if w.last_heartbeat < now - timedelta(seconds=3 * w.lease)
    ]
    return Worker.objects.using(alias).filter(pk__in=lost).update(lost=True) if lost else 0


# Retention on PostgreSQL: one bounded batch of succeeded jobs past the cutoff, deleted with their
# execution history, and unlinked from any dead letter that points at them (the dead letter keeps
# its own copy of the job), in one statement that never loads a row into Python. SKIP LOCKED:
# a job someone is retrying right now is left for the next round. Django's foreign keys are
# checked at commit, so the order of the three changes does not matter.
_PRUNE = """
WITH doomed AS (
    SELECT id FROM doctorjob_job
    WHERE status = '{status}' AND finished_at < statement_timestamp() - make_interval(secs => %s)
      -- A child whose parent has yet to run and read its result stays. The parent's status is
      -- looked up per row through the primary key: a NOT EXISTS here becomes an anti-join, or a
      -- hashed subplan, that reads the whole table for each batch.
      AND (parent_id IS NULL OR COALESCE((SELECT p.status FROM doctorjob_job AS p WHERE p.id = doctorjob_job.parent_id),
                                         'pruned') NOT IN ('waiting', 'queued', 'running'))
    ORDER BY finished_at LIMIT %s
    FOR UPDATE SKIP LOCKED
), history AS (
    DELETE FROM doctorjob_jobexecution WHERE job_id IN (SELECT id FROM doomed)
), letters AS (
    UPDATE doctorjob_deadletter
    SET job_id = CASE WHEN job_id IN (SELECT id FROM doomed) THEN NULL ELSE job_id END,
        requeued_job_id = CASE WHEN requeued_job_id IN (SELECT id FROM doomed) THEN NULL ELSE requeued_job_id END
    WHERE job_id IN (SELECT id FROM doomed) OR requeued_job_id IN (SELECT id FROM doomed)
)
DELETE FROM doctorjob_job WHERE id IN (SELECT id FROM doomed)
"""
# The done jobs retention deletes, each through its own partial index: succeeded jobs, and jobs a
# relay handed to a broker (doctorjob.relays).
PRUNED = (Status.SUCCEEDED, Status.RELAYED)


def vacuum_if_autovacuum_is_off(alias: str) -> float | None:
    """VACUUM the job tables when the PostgreSQL server runs without autovacuum; return the
    seconds it took, or None where it is not needed.

    Every job is inserted, updated two or three times and deleted: without VACUUM, the dead
    rows are never reused and the tables and their indexes grow for ever, however much is
    pruned. A plain VACUUM takes no lock that enqueue, claim or finish wait for; it holds up the
    other chores on the maintenance thread while it runs (seconds on a table of millions of
    rows, as it skips the pages it vacuumed before).
    """
    connection = connections[alias]
    if connection.vendor != "postgresql" or not connection.get_autocommit():
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('autovacuum')")
        if cursor.fetchone()[0] != "off":
            return None
        started = time.monotonic()
        # A role's statement_timeout would cancel it on a big table, every round, for nothing.
        cursor.execute("SET statement_timeout = 0")
        try:
            cursor.execute("VACUUM doctorjob_job, doctorjob_jobexecution, doctorjob_deadletter")
        finally:
            cursor.execute("RESET statement_timeout")
    return time.monotonic() - started


def prune_succeeded(
    alias: str,
    keep: timedelta,
    batch: int = PRUNE_BATCH,
    stopping: threading.Event | None = None,
    budget: float | None = None,
) -> tuple[int, bool]:
    """Delete succeeded and relayed jobs that finished more than ``keep`` ago (by the database's
    clock), in batches of ``batch``, each its own short transaction, until none is left,
    ``stopping`` is set or ``budget`` seconds have passed; returns (how many, whether any may be
    left)."""
    connection, total = connections[alias], 0
    deadline = None if budget is None else time.monotonic() + budget
    while True:
        if connection.vendor == "postgresql":
            deleted = [execute(connection, _PRUNE.format(status=s), [keep.total_seconds(), batch]) for s in PRUNED]
        else:
            cutoff = database_now(connection) - keep
            deleted = [_prune_portable(alias, cutoff, batch, status) for status in PRUNED]
        total += sum(deleted)
        if max(deleted) < batch:
            return total, False
        if (stopping is not None and stopping.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            return total, True


def _prune_portable(alias: str, cutoff: datetime, batch: int, status: str = Status.SUCCEEDED) -> int:
    """SQLite and MySQL/MariaDB: what _PRUNE does, in three statements."""
    if connections[alias].vendor == "sqlite":
        # Each statement on its own: a transaction that reads and then writes fails at once with
        # "database is locked" when another connection writes meanwhile (SQLite cannot upgrade
        # its lock). The three select the same jobs: a succeeded job never changes again, and
        # none finishes before the cutoff.
        doomed = prunable(alias, cutoff, status).order_by("finished_at", "id").values("id")[:batch]
        return delete_jobs(alias, doomed)
    with transaction.atomic(using=alias):
        ids = list(prunable(alias, cutoff, status).order_by("finished_at").values_list("id", flat=True)[:batch])
        if not ids:
            return 0
        return delete_jobs(alias, ids)


def prunable(alias: str, cutoff: datetime, status: str = Status.SUCCEEDED) -> QuerySet[Job]:
    """Jobs of ``status`` finished before ``cutoff``, but for children whose parent still has to run."""
    needed = Job.objects.using(alias).filter(
        id=OuterRef("parent_id"), status__in=[Status.WAITING, Status.QUEUED, Status.RUNNING]
    )
    return Job.objects.using(alias).filter(
        Q(parent__isnull=True) | ~Exists(needed), status=status, finished_at__lt=cutoff
    )


def enqueue_due_ticks(alias: str, now: datetime | None = None) -> list[Job]:
    """Enqueue the latest due tick of every schedule that has not had it yet; returns the jobs.

    Each tick is enqueued at most once, ever: the definition's ``last_tick`` is moved forward in
    the transaction that writes the tick's job, and a tick at or before it is never enqueued
    again, whatever becomes of the job (pruned, deleted, cancelled). Only the latest due tick
    counts: after downtime, one job runs for the ticks missed, not one per tick.
    """
    now = now or database_now(connections[alias])
    enqueued = []
    paused_queues = QueueState.objects.using(alias).filter(paused=True).values("name")
    definitions = (
        JobDefinition.objects.using(alias)
        .filter(retired=False, paused=False)
        .exclude(schedule="")
        .exclude(queue__in=paused_queues)
    )
    for name, expression, since, last, payload, options in definitions.values_list(
        "name", "schedule", "scheduled_since", "last_tick", "payload", "options"
    ):
        if name not in registry:
            continue
        try:
            tick = schedule.latest_tick(expression, now, (options or {}).get("timezone"))
            if (since and tick < since) or (last and tick <= last):
                continue
            with transaction.atomic(using=alias):
                moved = (
                    JobDefinition.objects.using(alias)
                    .filter(name=name)
                    .filter(Q(last_tick__isnull=True) | Q(last_tick__lt=tick))
                    .update(last_tick=tick)
                )
                if moved:  # no other worker recorded this tick first
                    # Due at the tick, by the database's clock, whatever this host's clock says.
                    job = enqueue(name, payload, key=schedule.tick_key(name, tick), run_at=tick, using=alias)
                    enqueued.append(job)
                    logger.info("scheduled job_id=%s name=%s tick=%s", job.pk, name, tick.isoformat())
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - one broken schedule must not hold back the others
            logger.exception("schedule of job %s failed; its tick was not enqueued", name)
    return enqueued


class Maintenance:
    """The chores, each on its own timer, done only while this worker holds the maintenance
    lease. ``run_due()`` does what is due now; ``start()`` runs it on a thread of its own."""

    def __init__(
        self,
        alias: str,
        holder: str,
        lease: float,
        stopping: threading.Event,
        on_finished: Callable[[Sequence[leases.Finish]], Any],
    ) -> None:
        self.alias, self.holder, self.lease = alias, holder, lease
        self.stopping, self.on_finished = stopping, on_finished
        self.leader = False
        self._pruned, self._pruning_seconds = 0, 0.0  # of the prune in progress, for its log line
        self._due = {"elect": 0.0, "sweep": 0.0, "prune": 0.0, "tick": 0.0, "count": 0.0}
        self._thread: threading.Thread | None = None

    def run_due(self, *, prune: bool = True) -> None:
        """Do the chores that are due; ``prune=False`` leaves pruning, the long one, for later."""
        now = time.monotonic()
        if now >= self._due["elect"]:
            was, self.leader = self.leader, elect(self.alias, self.holder, self.lease)
            if self.leader and not was:
                logger.info("maintenance taken over worker=%s", self.holder)
            self._due["elect"] = now + self.lease / 3
        if not self.leader:
            return
        # Each chore on its own: one that fails (a prune refused by a foreign key of yours, a
        # broken definition) is logged and tried again later, and holds up none of the others.
        if now >= self._due["sweep"] and self._chore("sweep", self._sweep, now + min(self.lease / 3, 5.0)):
            self._due["sweep"] = now + min(self.lease / 3, 5.0)
        if now >= self._due["tick"] and self._chore("tick", lambda: enqueue_due_ticks(self.alias), now + 1.0):
            self._due["tick"] = now + TICK_EVERY
        if now >= self._due["count"]:
            self._chore("count", lambda: totals.count(self.alias), now + totals.COUNT_EVERY)
            self._due["count"] = now + totals.COUNT_EVERY
        if prune and now >= self._due["prune"]:
            self._chore("prune", self._prune, now + PRUNE_EVERY)

    def _chore(self, name: str, chore: Callable[[], Any], retry_at: float) -> bool:
        """Run one chore; on an error other than the database going away, log it with its
        traceback and put the chore off until ``retry_at``. True if it ran."""
        try:
            chore()
            return True
        except (OperationalError, InterfaceError):
            raise  # the database is away: the thread backs off and reconnects
        except Exception:  # noqa: BLE001 - a chore must never stop the others
            logger.exception("maintenance: %s failed, trying again in %.0fs", name, retry_at - time.monotonic())
            self._due[name] = retry_at
            return False

    def _sweep(self) -> None:
        self.on_finished(sweep_expired(self.alias))  # logged as retrying or dead, error "worker lost"
        mark_lost_workers(self.alias)

    def _prune(self) -> None:
        """A few seconds at a time, so that the lease and the other chores keep their timers
        through a backlog of millions; the next round follows at once while rows are left."""
        started = time.monotonic()
        pruned, more = prune_succeeded(
            self.alias, settings.KEEP_SUCCEEDED, stopping=self.stopping, budget=min(self.lease / 3, 5.0)
        )
        self._pruned += pruned
        self._pruning_seconds += time.monotonic() - started
        if more:
            self._due["prune"] = 0.0
            return
        if self._pruned:
            logger.info("pruned succeeded jobs count=%s seconds=%.1f", self._pruned, self._pruning_seconds)
        self._pruned, self._pruning_seconds = 0, 0.0
        self._due["prune"] = time.monotonic() + PRUNE_EVERY
        # Every round, pruned or not: each status change leaves a dead row too.
        try:
            seconds = vacuum_if_autovacuum_is_off(self.alias)
        except DatabaseError as exc:  # cancelled, refused: the next round tries again
            logger.warning("vacuuming doctorjob's tables failed (autovacuum is off on this server): %s", exc)
        else:
            if seconds is not None:
                logger.info("vacuumed doctorjob's tables (autovacuum is off on this server) seconds=%.1f", seconds)

    def next_due(self) -> float:
        """When a chore is next due (time.monotonic()); a worker that does not hold the lease only
        tries again to take it."""
        return min(self._due.values()) if self.leader else self._due["elect"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="doctorjob-maintenance", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures, first_tries = 0, 3
        try:
            # One round at least, even if the worker stops at once: a burst worker prunes too.
            while first_tries or not self.stopping.is_set():
                try:
                    self.run_due()
                    failures, first_tries = 0, 0
                except DatabaseError as exc:
                    failures, first_tries = failures + 1, max(first_tries - 1, 0)
                    pause = min(0.5 * 2 ** (failures - 1), 10.0)
                    logger.warning("maintenance: database error, retrying in %.1fs: %s", pause, exc)
                    close_quietly(self.alias)
                    if self.stopping.wait(pause):
                        time.sleep(0.1)  # stopping: a short pause before the last tries
                    continue
                self.stopping.wait(max(0.0, self.next_due() - time.monotonic()))
            if self.leader:
                resign(self.alias, self.holder)
        except DatabaseError as exc:
            logger.warning("maintenance: could not give up the maintenance lease: %s", exc)
        finally:
            connections.close_all()  # this thread's connections
