"""The worker: claim → run → record, with leases, retries and graceful shutdown.

One main thread owns the worker's database connection: it claims jobs in batches, hands them
to a pool of handler threads, records their outcomes in batches, renews leases, sweeps
expired leases and prunes old jobs. Handlers run in the pool threads, each with its own
Django connection (closed between jobs when stale). No argparse here: see run_jobs.
"""
from __future__ import annotations

import logging
import os
import queue as queues_module
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import partial
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from . import definitions, leases, schedule
from .conf import settings
from .context import JobContext, install_log_record_factory, set_current_job
from .exceptions import InvalidPayload, LeaseLost, PermanentError
from .leases import Claimed
from .models import Job, JobDefinition, JobExecution, Outcome, QueueState
from .models import Worker as WorkerRow
from .outbox import first_non_json
from .registry import registry
from .retry import retry_delay

logger = logging.getLogger("doctorjob")

PRUNE_EVERY = 60.0
RECORD_EVERY = 0.05  # seconds an outcome may wait to be saved with others in one statement
REFRESH_EVERY = 1.0  # pauses, minimal versions and schedules are re-read this often
TICK_EVERY = 0.25  # due schedule ticks are checked this often (6-field schedules tick each second)


@dataclass
class Attempt:
    """What happened to one attempt, reported by a handler thread to the main thread."""

    job: Claimed
    kind: str  # succeeded, recorded (atomic, already saved), failed, dead, skipped, lost
    duration: float
    result: Any = None
    error: str = ""
    traceback: str = ""
    finished_at: datetime | None = None


class Worker:
    """Drain jobs from the database until stopped (or, in burst mode, until none is runnable)."""

    def __init__(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease: float | None = None,
        shutdown_timeout: float | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        using: str | None = None,
        log_jobs: bool = True,
    ) -> None:
        self.queues = list(queues) if queues else None
        self.concurrency = settings.CONCURRENCY if concurrency is None else concurrency
        self.batch_size = settings.BATCH_SIZE if batch_size is None else batch_size
        self.poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
        self.lease = settings.LEASE if lease is None else lease
        self.shutdown_timeout = settings.SHUTDOWN_TIMEOUT if shutdown_timeout is None else shutdown_timeout
        self.burst = burst
        self.log_jobs = log_jobs  # the per-job INFO lines (claimed, succeeded); run_jobs -v 0 turns them off
        self.max_jobs = max_jobs
        for option, value, minimum in (("concurrency", self.concurrency, 1), ("batch_size", self.batch_size, 1),
                                       ("poll_interval", self.poll_interval, 0.001), ("lease", self.lease, 3),
                                       ("shutdown_timeout", self.shutdown_timeout, 0),
                                       ("max_jobs", max_jobs if max_jobs is not None else 1, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
                raise ValueError(f"{option} must be a number >= {minimum:g}, got {value!r}")
        self.alias = using or router.db_for_write(Job)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.processed = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._todo: queues_module.SimpleQueue[Claimed | None] = queues_module.SimpleQueue()
        self._done: queues_module.SimpleQueue[Attempt] = queues_module.SimpleQueue()
        self._in_flight: dict[int, Claimed] = {}
        self._unrecorded: list[Attempt] = []
        self._claimed = 0
        self._due = {"renew": 0.0, "sweep": 0.0, "prune": 0.0, "refresh": 0.0, "tick": 0.0}
        self._paused_names: list[str] = []
        self._paused_queues: list[str] = []
        self._min_version: dict[str, int] = {}
        self._schedules: list[tuple[str, str, datetime | None, Any, str | None]] = []
        self._last_tick: dict[str, datetime] = {}
        self._keyed = False
        self._skip_on_overlap: list[str] = []
        self._low_water = max(self.batch_size // 2, self.concurrency)
        # timezone.now() reads settings.USE_TZ on each call, through Django's LazySettings, which
        # costs more than the rest of a no-op job's bookkeeping: the worker reads it once.
        self._now = partial(datetime.now, dt_timezone.utc) if django_settings.USE_TZ else datetime.now

    # -- control ------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming and shut down gracefully; ``now`` skips waiting for running jobs."""
        if now:
            self.shutdown_timeout = 0
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        install_log_record_factory()
        failures = 0
        while True:  # e.g. the database restarting, or SQLite locked by another worker's start-up
            try:
                self._start_up()
                break
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                self._pause_after_database_error(exc, failures)
                if self._stopping.is_set():
                    return
        threads = [threading.Thread(target=self._handler_thread, name=f"doctorjob-{i}", daemon=True)
                   for i in range(self.concurrency)]
        for thread in threads:
            thread.start()
        wakeup = self._start_listener()
        logger.info(
            "worker started worker=%s queues=%s concurrency=%s batch_size=%s lease=%ss wakeup=%s",
            self.id, ",".join(self.queues) if self.queues else "*", self.concurrency, self.batch_size,
            self.lease, wakeup,
        )
        try:
            self._loop()
        finally:
            self._shutdown()
            for _ in threads:
                self._todo.put(None)
            try:
                WorkerRow.objects.using(self.alias).filter(name=self.id).delete()
            except DatabaseError as exc:
                logger.warning("could not remove worker row worker=%s: %s", self.id, exc)
            connections[self.alias].close()
        logger.info("worker stopped worker=%s processed=%s", self.id, self.processed)

    def _start_up(self) -> None:
        """Sync job definitions, warn about unversioned changes, register this worker."""
        for change in definitions.sync(self.alias):
            logger.info("definition %s", change)
        for problem in definitions.unversioned_changes(self.alias):
            logger.warning("%s: increment its version (doctorjob.W001)", problem)
        WorkerRow.objects.using(self.alias).update_or_create(name=self.id, defaults=dict(
            host=socket.gethostname(), pid=os.getpid(), queues=",".join(self.queues or []),
            concurrency=self.concurrency, lease=self.lease,
        ))
        self._keyed = any(t.singleton or t.concurrency_key for t in registry.values())
        self._skip_on_overlap = [n for n, t in registry.items() if t.on_overlap == "skip"]

    def _refresh_definitions(self) -> None:
        """Re-read pauses, minimal versions and schedules (operators change them at any time)."""
        rows = list(JobDefinition.objects.using(self.alias).filter(retired=False).values_list(
            "name", "paused", "min_version", "schedule", "scheduled_since", "payload", "options"))
        self._paused_names = [name for name, paused, *_ in rows if paused]
        self._min_version = {name: min_version for name, _, min_version, *_ in rows}
        self._schedules = [(name, schedule, since, payload, (options or {}).get("timezone"))
                           for name, paused, _, schedule, since, payload, options in rows
                           if schedule and not paused and name in registry]
        self._paused_queues = list(QueueState.objects.using(self.alias).filter(paused=True)
                                   .values_list("name", flat=True))

    def _enqueue_due_ticks(self) -> None:
        """Enqueue the latest due tick of every schedule, once: the tick's key makes a second
        worker's attempt (or ours, after a restart) a no-op."""
        from .outbox import enqueue

        now = timezone.now()
        for name, expression, since, payload, tz in self._schedules:
            if self.queues and registry[name].queue not in self.queues:
                continue
            tick = schedule.latest_tick(expression, now, tz)
            if (since and tick < since) or self._last_tick.get(name) == tick:
                continue
            job = enqueue(name, payload, key=schedule.tick_key(name, tick), using=self.alias)
            self._last_tick[name] = tick
            if job.created_at >= now:
                logger.info("scheduled job_id=%s name=%s tick=%s", job.pk, name, tick.isoformat())

    # -- main loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        failures, next_poll = 0, 0.0
        while not self._stopping.is_set():
            # Claim when something asked for it (NOTIFY, the handler threads running low) or
            # polling is due; other wake-ups only save outcomes and run maintenance.
            woken = self._wake.is_set()
            self._wake.clear()
            polling = woken or time.monotonic() >= next_poll
            try:
                self._record()
                self._maintain()
                claimed, full = self._claim() if polling else (0, False)
                failures = 0
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                self._pause_after_database_error(exc, failures)
                continue
            if polling:
                next_poll = time.monotonic() + self.poll_interval
            if not self._in_flight and (
                (self.burst and polling and not claimed)
                or (self.max_jobs is not None and self._claimed >= self.max_jobs)
            ):
                return
            if full and self._todo.qsize() < self.batch_size:
                self._wake.set()  # a full batch came back: more jobs are probably waiting
                continue
            self._wake.wait(self._wait_time(next_poll))

    def _pause_after_database_error(self, exc: Exception, failures: int) -> None:
        pause = min(0.5 * 2 ** (failures - 1), 10.0)
        logger.warning("database unavailable, retrying in %.1fs: %s", pause, exc)
        self._reset_connection()
        self._stopping.wait(pause)

    def _claim(self) -> tuple[int, bool]:
        """Top up the jobs waiting for a handler thread to about one batch ahead of the threads,
        so they never wait on a claim round trip. Returns (claimed, whether the batch was full)."""
        waiting = self._todo.qsize()
        if waiting > self._low_water:
            return 0, False
        limit = self.batch_size
        if self.max_jobs is not None:
            limit = min(limit, self.max_jobs - self._claimed)
        if limit <= 0:
            return 0, False
        filters = dict(queues=self.queues, paused_names=self._paused_names, paused_queues=self._paused_queues)
        jobs = leases.claim(self.alias, worker=self.id, limit=limit, lease=self.lease, **filters)
        free_threads = self.concurrency - len(self._in_flight) - len(jobs)
        if self._keyed and len(jobs) < limit and free_threads > 0:
            # Only as many keyed jobs as threads are free: a held key blocks every other worker.
            keyed, skipped = leases.claim_keyed(
                self.alias, worker=self.id, limit=min(limit - len(jobs), free_threads), lease=self.lease,
                skip_on_overlap=self._skip_on_overlap, **filters)
            for job_id in skipped:
                logger.info("skipped job_id=%s: another run with its concurrency key is in progress", job_id)
            jobs += keyed
        self._claimed += len(jobs)
        for job in jobs:
            self._in_flight[job.id] = job
            self._todo.put(job)
        return len(jobs), len(jobs) == limit

    def _wait_time(self, next_poll: float) -> float:
        now = time.monotonic()
        wait = min(next_poll, *self._due.values()) - now
        if self._in_flight:
            wait = min(wait, RECORD_EVERY)  # outcomes of running jobs are saved within this
        return max(0.0, wait)

    def _record(self) -> None:
        """Save the outcomes handler threads reported: successes in one statement."""
        while True:
            try:
                self._unrecorded.append(self._done.get_nowait())
            except queues_module.Empty:
                break
        if not self._unrecorded:
            return
        pending, self._unrecorded = self._unrecorded, []
        try:
            successes = [o for o in pending if o.kind == "succeeded"]
            ours = set(leases.succeed(self.alias, [(o.job, o.result, o.finished_at, o.duration)
                                                   for o in successes], self.id))
            for o in successes:
                if o.job.id not in ours:
                    o.kind = "lost"  # another worker took it over: our success changed nothing
            history = []
            for outcome in pending:
                if self._record_one(outcome) and outcome.kind in ("failed", "dead", "skipped"):
                    history.append(self._execution(outcome))
                self._in_flight.pop(outcome.job.id, None)
                self.processed += 1
            leases.record_executions(self.alias, history)
        except BaseException:
            # Keep what is not recorded for the next round; recording is idempotent (fenced).
            self._unrecorded = [o for o in pending if o.job.id in self._in_flight] + self._unrecorded
            raise

    def _execution(self, o: Attempt) -> JobExecution:
        finished = o.finished_at or timezone.now()
        outcome = Outcome.SKIPPED if o.kind == "skipped" else Outcome.FAILED
        return JobExecution(job_id=o.job.id, attempt=o.job.attempts, worker=self.id, started_at=o.job.started_at,
                            finished_at=finished, duration=timedelta(seconds=o.duration), outcome=outcome,
                            error=o.error)

    def _record_one(self, o: Attempt) -> bool:
        """Save one outcome (successes are already saved); False if the lease was lost."""
        job, log = o.job, logger.info
        if o.kind in ("succeeded", "recorded"):
            if self.log_jobs:
                log("succeeded job_id=%s name=%s attempt=%s duration=%.3fs", job.id, job.name, job.attempts,
                    o.duration)
            return True
        if o.kind == "skipped":
            if ours := leases.skip(self.alias, job, o.error):
                log("skipped job_id=%s name=%s attempt=%s reason=%s", job.id, job.name, job.attempts, o.error)
        elif o.kind == "failed" and job.attempts < job.max_attempts:
            backoff = registry[job.name].backoff_policy()
            run_at = timezone.now() + timedelta(seconds=retry_delay(backoff, job.attempts))
            if ours := leases.retry_later(self.alias, job, error=o.error, tb=o.traceback, run_at=run_at):
                logger.warning("retrying job_id=%s name=%s attempt=%s next_run_at=%s error=%s",
                               job.id, job.name, job.attempts, run_at.isoformat(), o.error)
        elif o.kind != "lost":
            if ours := leases.dead_letter(self.alias, job, error=o.error, tb=o.traceback):
                logger.error("dead job_id=%s name=%s attempt=%s error=%s", job.id, job.name, job.attempts, o.error)
        else:
            ours = False
        if not ours:
            logger.warning("lease lost job_id=%s name=%s attempt=%s: another worker took the job over",
                           job.id, job.name, job.attempts)
        return ours

    def _maintain(self) -> None:
        """Renew our leases every third of the lease, sweep others' expired ones once per lease,
        prune succeeded jobs every minute."""
        now = time.monotonic()
        if now >= self._due["renew"]:
            leases.renew(self.alias, self._in_flight.values(), self.lease)
            WorkerRow.objects.using(self.alias).filter(name=self.id).update(
                last_heartbeat=timezone.now(), lost=False)
            self._due["renew"] = now + self.lease / 3
        if now >= self._due["refresh"]:
            self._refresh_definitions()
            self._due["refresh"] = now + REFRESH_EVERY
        if now >= self._due["tick"]:
            if self._schedules and not self._stopping.is_set():
                self._enqueue_due_ticks()
            # Without schedules only the refresh can bring one: don't wake up for nothing.
            self._due["tick"] = now + (TICK_EVERY if self._schedules else REFRESH_EVERY)
        if now >= self._due["sweep"]:
            requeued, dead = leases.sweep_expired(self.alias)
            for job in requeued:
                logger.warning("requeued job_id=%s name=%s attempt=%s: %s", job.id, job.name, job.attempts,
                               leases.WORKER_LOST)
            for job in dead:
                logger.error("dead job_id=%s name=%s attempt=%s error=%s", job.id, job.name, job.attempts,
                             leases.WORKER_LOST)
            leases.mark_lost_workers(self.alias)
            self._due["sweep"] = now + self.lease
        if now >= self._due["prune"]:
            pruned = leases.prune_succeeded(self.alias, settings.KEEP_SUCCEEDED)
            if pruned:
                logger.info("pruned succeeded jobs count=%s", pruned)
            self._due["prune"] = now + PRUNE_EVERY

    def _reset_connection(self) -> None:
        try:
            connections[self.alias].close()
        except DatabaseError:
            pass

    # -- shutdown -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Release jobs not started yet, give running ones ``shutdown_timeout`` to finish,
        then return the rest to the queue without counting the attempt."""
        self._stopping.set()
        not_started = []
        while True:
            try:
                job = self._todo.get_nowait()
            except queues_module.Empty:
                break
            if job is not None:
                not_started.append(job)
        deadline = time.monotonic() + self.shutdown_timeout
        while True:
            try:
                if not_started:
                    leases.release(self.alias, not_started)
                    for job in not_started:
                        self._in_flight.pop(job.id, None)
                    not_started = []
                self._record()
                running = list(self._in_flight.values())
                if not running:
                    return
                if time.monotonic() >= deadline:
                    released = leases.release(self.alias, running)
                    logger.warning("shutdown timeout: returned %s running job(s) to the queue", released)
                    return
                self._maintain()
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable during shutdown: %s", exc)
                self._reset_connection()
                if time.monotonic() >= deadline:
                    return  # leases expire and other workers rescue the jobs
            self._wake.clear()
            self._wake.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    # -- handler threads ------------------------------------------------------------------------

    def _handler_thread(self) -> None:
        # This thread's connection objects, made once (unconnected until a handler uses one):
        # looking them up through `connections` after every job costs more than a no-op job.
        own = []
        for alias in connections:
            try:
                own.append(connections[alias])
            except ImproperlyConfigured:  # its backend cannot load: no handler can use it either
                pass
        while True:
            job = self._todo.get()
            if job is None:
                connections.close_all()  # this thread's connections
                return
            if self._stopping.is_set() and self.shutdown_timeout == 0:
                continue
            outcome = self._execute(job)
            _tidy_connections(own)
            self._done.put(outcome)
            # Wake the main thread only when it has work: claiming more (the queue of waiting
            # jobs runs low) or saving outcomes in bulk; otherwise it saves them on its timer.
            if self._todo.qsize() <= self._low_water:
                self._wake.set()

    def _execute(self, job: Claimed) -> Attempt:
        started = time.monotonic()
        job_type = registry.get(job.name)
        if job_type is None:
            return Attempt(job, "dead", 0.0, error=f"unknown job '{job.name}': no handler is registered "
                                                  "under that name in this worker")
        try:
            job_type.validate(job.payload)
        except InvalidPayload as exc:
            return Attempt(job, "dead", 0.0, error=str(exc))
        min_version = self._min_version.get(job.name, job_type.min_version)
        if job.version < min_version:
            return Attempt(job, "skipped", 0.0, error=f"version {job.version} of job '{job.name}' is below "
                           f"its minimal supported version {min_version}")
        ctx = JobContext(job.id, job.name, job.queue, job.attempts, job.max_attempts, job.key,
                         job.created_at, self.id)
        set_current_job(ctx, job.version)
        if self.log_jobs and logger.isEnabledFor(logging.INFO):
            logger.info("claimed job_id=%s name=%s attempt=%s", job.id, job.name, job.attempts)
        try:
            if job_type.atomic:
                # The handler's writes and the success mark commit together or not at all.
                with transaction.atomic(using=self.alias):
                    result = _jsonable(job_type.func(job.payload, ctx), ctx)
                    duration = time.monotonic() - started
                    if not leases.succeed(self.alias, [(job, result, timezone.now(), duration)], self.id):
                        raise LeaseLost(f"job {job.id} is no longer held by this worker")
                return Attempt(job, "recorded", time.monotonic() - started)
            result = _jsonable(job_type.func(job.payload, ctx), ctx)
            return Attempt(job, "succeeded", time.monotonic() - started, result, finished_at=self._now())
        except LeaseLost:
            return Attempt(job, "lost", time.monotonic() - started)
        except PermanentError as exc:
            return Attempt(job, "dead", time.monotonic() - started, error=_describe(exc),
                           traceback=traceback.format_exc())
        except BaseException as exc:  # noqa: BLE001 - a handler must never kill its thread
            return Attempt(job, "failed", time.monotonic() - started, error=_describe(exc),
                           traceback=traceback.format_exc())
        finally:
            set_current_job(None)

    # -- LISTEN/NOTIFY --------------------------------------------------------------------------

    def _start_listener(self) -> str:
        """LISTEN where it can work, and say how this worker wakes up (for the start-up banner)."""
        poll = f"poll every {self.poll_interval}s"
        alias = settings.LISTEN_DATABASE
        if alias is False:
            return poll
        if alias is None:
            alias = self.alias
            if leases.behind_pooler(connections[alias]):  # a LISTEN there hears nothing after its transaction
                return (f"{poll} (no LISTEN through the pooler of '{alias}', which sets "
                        "DISABLE_SERVER_SIDE_CURSORS; DOCTORJOB['LISTEN_DATABASE'] can name a direct alias)")
        if connections[alias].vendor != "postgresql":
            return poll
        params = connections[alias].get_connection_params()
        threading.Thread(target=self._listen, args=(params,), name="doctorjob-listen", daemon=True).start()
        return f"LISTEN/NOTIFY on '{alias}' + {poll}"

    def _listen(self, params: dict[str, Any]) -> None:
        """Wake the main loop when a NOTIFY for one of our queues arrives; polling stays the
        fallback, so a lost listening connection only costs latency."""
        import psycopg

        from .outbox import CHANNEL

        pause = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # catch up on what was enqueued while we were not listening
                    pause = 0.5
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if self.queues is None or note.payload in self.queues:
                                self._wake.set()
            except Exception as exc:  # noqa: BLE001 - keep polling, retry listening later
                logger.warning("LISTEN connection lost, polling until it is back: %s", exc)
                self._stopping.wait(pause)
                pause = min(pause * 2, 10.0)


def _tidy_connections(own: Sequence[BaseDatabaseWrapper]) -> None:
    """Between jobs, as between requests: close connections that are broken or past
    CONN_MAX_AGE, and health-check the survivors on their next use, whatever
    CONN_HEALTH_CHECKS says: a persistent connection may die while idle (database restart,
    pg_terminate_backend) and the next job should not pay an attempt for it."""
    for conn in own:
        if conn.connection is not None:
            conn.close_if_unusable_or_obsolete()
            conn.health_check_enabled = True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _jsonable(result: Any, ctx: JobContext) -> Any:
    problem = first_non_json(result, "result")
    if problem:
        ctx.logger.warning("%s is a %s, not JSON: the result is not saved", problem[0], type(problem[1]).__name__)
        return None
    return result
