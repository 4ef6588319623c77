"""The worker: claim → run → record, with leases, retries and graceful shutdown.

One main thread owns the worker's database connection: it claims jobs in batches, hands them
to a pool of handler threads, records their outcomes in batches and renews leases. Handlers
run in the pool threads, each with its own Django connection (closed between jobs when stale).
The cluster-wide chores (lease sweep, pruning, schedule ticks) run on a thread of their own
(``maintenance``). No argparse here: see run_jobs.
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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from . import definitions, leases, relays
from .conf import out_of_range, settings
from .context import JobContext, install_log_record_factory, set_current_job
from .db import behind_pooler, close_quietly, database_now, not_migrated
from .exceptions import InvalidPayload, LeaseLost, NotMigrated, PermanentError
from .leases import RELEASED, Finish
from .maintenance import Maintenance
from .models import Job, JobDefinition
from .models import Worker as WorkerRow
from .payloads import BIG_INT, DEPTH, MAX_DEPTH, NUL, SURROGATE, first_problem, storable, storable_text
from .registry import registry
from .signal_handlers import QuietPerJob
from .signals import DEAD, SKIPPED, SUCCEEDED, job_finished, job_started, send_robust

if TYPE_CHECKING:
    from .watchdog import Watchdog

logger = logging.getLogger("doctorjob")

RECORD_EVERY = 0.05  # seconds an outcome may wait to be saved with others in one statement
REFRESH_EVERY = 1.0  # minimal versions are re-read this often
# What a handler thread reports: the outcome to record ("todo"), already recorded with the
# handler's own writes ("done", atomic jobs), or not ours any more ("lost").
TODO, DONE, LOST = "todo", "done", "lost"


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
        self.progress_sink: Callable[[int, Any], None] | None = None  # doctorjob.testing's, see JobContext
        self.max_jobs = max_jobs
        for option, value in (
            ("CONCURRENCY", self.concurrency),
            ("BATCH_SIZE", self.batch_size),
            ("POLL_INTERVAL", self.poll_interval),
            ("LEASE", self.lease),
            ("SHUTDOWN_TIMEOUT", self.shutdown_timeout),
            ("MAX_JOBS", max_jobs if max_jobs is not None else 1),
        ):
            if problem := out_of_range(option, value):
                raise ValueError(f"{option.lower()} {problem}")
        self.alias = using or router.db_for_write(Job)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.processed = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._todo: queues_module.SimpleQueue[Job | None] = queues_module.SimpleQueue()
        self._done: queues_module.SimpleQueue[tuple[Finish, str]] = queues_module.SimpleQueue()
        self._in_flight: dict[int, Job] = {}
        self._unrecorded: list[tuple[Finish, str]] = []
        self._claimed = 0
        self._claimed_since_beat = False  # written to the worker's row with the next heartbeat
        self._due = {"renew": 0.0, "refresh": 0.0}
        self._min_version: dict[str, int] = {}
        self._skip_on_overlap: list[str] = []
        self._relayed = leases.Relayed((), ())  # relays publish these: never ours to run
        self._low_water = max(self.batch_size // 2, self.concurrency)
        # Handler threads running a job that has a timeout: (job, deadline, timeout). A thread
        # whose job timed out is abandoned (Python cannot stop it) and replaced by a new one.
        self._running: dict[threading.Thread, tuple[Job, float, float]] = {}
        self._abandoned: set[threading.Thread] = set()
        self._timing = threading.Lock()  # a handler ending at its deadline is either timed out or not
        self._handlers = 0
        self.recycle = False  # too many handler threads stuck in timed-out jobs: exit for a fresh process
        self.maintenance = Maintenance(self.alias, self.id, self.lease, self._stopping, self._finished)
        self.watchdog: Watchdog | None = None  # run_jobs starts one, and says goodbye to it (watchdog.py)

    # -- control ------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming and shut down gracefully; ``now`` skips waiting for running jobs."""
        if now:
            self.shutdown_timeout = 0
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        install_log_record_factory()
        quiet = None if self.log_jobs else QuietPerJob()
        if quiet:
            logger.addFilter(quiet)
        try:
            self._run()
        finally:
            if quiet:
                logger.removeFilter(quiet)

    def _run(self) -> None:
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
        for _ in range(self.concurrency):
            self._start_handler_thread()
        self.maintenance.start()
        wakeup = self._start_listener()
        logger.info(
            "worker started worker=%s queues=%s concurrency=%s batch_size=%s lease=%ss wakeup=%s watchdog=%s",
            self.id,
            ",".join(self.queues) if self.queues else "*",
            self.concurrency,
            self.batch_size,
            self.lease,
            wakeup,
            f"pid {self.watchdog.pid}" if self.watchdog else "none",
        )
        try:
            self._loop()
        finally:
            self._shutdown()
            for _ in range(self.concurrency):
                self._todo.put(None)
            self.maintenance.join(self.shutdown_timeout + 10)
            try:
                WorkerRow.objects.using(self.alias).filter(name=self.id).delete()
            except DatabaseError as exc:
                logger.warning("could not remove worker row worker=%s: %s", self.id, exc)
            connections[self.alias].close()
        logger.info("worker stopped worker=%s processed=%s", self.id, self.processed)

    def _start_up(self) -> None:
        """Sync job definitions, warn about unversioned changes, register this worker, and do the
        chores once if no other worker does them (a burst worker rescues lost jobs first)."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            tables = set(connection.introspection.table_names(cursor))
        if not {"doctorjob_job", "doctorjob_maintenancelease"} <= tables:
            raise NotMigrated(not_migrated(self.alias))
        for change in definitions.sync(self.alias):
            logger.info("definition %s", change)
        for problem in definitions.unversioned_changes(self.alias):
            logger.warning("%s: increment its version (doctorjob.W001)", problem)
        now = database_now(connection)
        WorkerRow.objects.using(self.alias).update_or_create(
            name=self.id,
            defaults=dict(
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(self.queues or []),
                concurrency=self.concurrency,
                lease=self.lease,
                started_at=now,
                last_heartbeat=now,
            ),
        )
        self._skip_on_overlap = [n for n, t in registry.items() if t.on_overlap == "skip"]
        self._relayed = relays.relayed()
        if self.queues:
            used = {queue for t in registry.values() for queue in t.queues} | set(
                JobDefinition.objects.using(self.alias).filter(retired=False).values_list("queue", flat=True)
            )
            for queue in self.queues:
                if queue not in used:
                    logger.warning(
                        "queue %r: no registered job uses it (a typo?); this worker takes only the jobs "
                        "enqueued there with queue=%r",
                        queue,
                        queue,
                    )
        self.maintenance.run_due(prune=False)  # pruning starts at once, on the maintenance thread

    def _refresh_definitions(self) -> None:
        """Re-read minimal versions (operators change them at any time)."""
        self._min_version = dict(
            JobDefinition.objects.using(self.alias).filter(retired=False).values_list("name", "min_version")
        )

    # -- main loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        failures, next_poll = 0, 0.0
        while not self._stopping.is_set():
            # Claim when something asked for it (NOTIFY, the handler threads running low) or
            # polling is due; other wake-ups only save outcomes and renew leases.
            woken = self._wake.is_set()
            self._wake.clear()
            polling = woken or time.monotonic() >= next_poll
            try:
                self._time_out()
                self._record()
                self._renew()
                picked, full = self._claim() if polling else (0, False)
                failures = 0
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                self._pause_after_database_error(exc, failures)
                continue
            if polling:
                next_poll = time.monotonic() + self.poll_interval
            if not self._in_flight and (
                (self.burst and polling and not picked)
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
        close_quietly(self.alias)
        self._stopping.wait(pause)

    def _claim(self) -> tuple[int, bool]:
        """Top up the jobs waiting for a handler thread to about one batch ahead of the threads,
        so they never wait on a claim round trip. Returns (rows picked, whether the batch was full)."""
        waiting = self._todo.qsize()
        if waiting > self._low_water:
            return 0, False
        limit = self.batch_size
        if self.max_jobs is not None:
            limit = min(limit, self.max_jobs - self._claimed)
        if limit <= 0:
            return 0, False
        claim = leases.claim(
            self.alias,
            worker=self.id,
            limit=limit,
            lease=self.lease,
            queues=self.queues,
            skip_on_overlap=self._skip_on_overlap,
            relayed=self._relayed,
        )
        for job in claim.skipped:
            send_robust(job_finished, job=job, outcome=SKIPPED, duration=None)
        self._claimed += len(claim.jobs)
        self._claimed_since_beat = self._claimed_since_beat or bool(claim.jobs)
        for job in claim.jobs:
            self._in_flight[job.id] = job
            self._todo.put(job)
        return claim.picked, claim.picked == limit

    def _wait_time(self, next_poll: float) -> float:
        now = time.monotonic()
        deadlines = [deadline for _, deadline, _ in list(self._running.values())]  # handler threads change it
        wait = min(next_poll, *self._due.values(), *deadlines) - now
        if self._in_flight:
            wait = min(wait, RECORD_EVERY)  # outcomes of running jobs are saved within this
        return max(0.0, wait)

    def _record(self) -> None:
        """Save the outcomes handler threads reported, all in one statement, then tell the
        ``job_finished`` receivers."""
        while True:
            try:
                self._unrecorded.append(self._done.get_nowait())
            except queues_module.Empty:
                break
        if not self._unrecorded:
            return
        pending, self._unrecorded = self._unrecorded, []
        todo = [f for f, state in pending if state == TODO]
        watchdog = self.watchdog
        if watchdog:  # should recording kill us (a result too big to encode), these pay for it
            watchdog.recording([f.job.id for f in todo])
        try:
            try:
                ours = {f.job.id: f for f in leases.finish(self.alias, todo)}
            except (OperationalError, InterfaceError):
                raise  # the database is away: all of them wait for the next round
            except (DatabaseError, ValueError, TypeError) as exc:  # one job's outcome cannot be stored
                logger.warning("recording %s outcome(s) together failed, recording each alone: %s", len(todo), exc)
                ours = self._record_each(todo)
        except BaseException:
            self._unrecorded = pending + self._unrecorded  # recording is idempotent (fenced)
            raise
        finally:
            if watchdog:
                watchdog.recording(())
        finished = []
        for f, state in pending:
            if self._in_flight.get(f.job.id) is f.job:  # not a newer claim of the same job
                del self._in_flight[f.job.id]
            self.processed += 1
            if state == DONE:
                finished.append(f)
            elif state == TODO and f.job.id in ours:
                finished.append(ours[f.job.id])
            else:
                logger.warning(
                    "lease lost job_id=%s name=%s attempt=%s: another worker took the job over",
                    f.job.id,
                    f.job.name,
                    f.job.attempts,
                )
        self._finished(finished)

    def _record_each(self, todo: Sequence[Finish]) -> dict[int, Finish]:
        """Record outcomes one at a time, so that a value the database refuses fails its own job
        alone: it is recorded as a failed attempt that says why. Returns what was recorded, by id."""
        ours: dict[int, Finish] = {}
        for f in todo:
            try:
                with transaction.atomic(using=self.alias):
                    done = leases.finish(self.alias, [f])
            except (OperationalError, InterfaceError):
                raise
            except (DatabaseError, ValueError, TypeError) as exc:
                error = storable_text(
                    f"the worker could not store this attempt's outcome ({f.outcome}): {_describe(exc)}"
                )
                logger.error("job_id=%s name=%s: %s", f.job.id, f.job.name, error)
                failed = self._failed(f.job, leases.retry_or_dead(f.job), error[:10_000])[0]
                done = leases.finish(self.alias, [failed._replace(duration=f.duration)])
            ours.update((d.job.id, d) for d in done)
        return ours

    @staticmethod
    def _finished(finished: Sequence[Finish]) -> None:
        for f in finished:
            send_robust(job_finished, job=f.job, outcome=f.outcome, duration=f.duration)

    def _renew(self) -> None:
        """Renew our leases and our heartbeat every third of the lease; re-read minimal versions."""
        now = time.monotonic()
        if now >= self._due["renew"]:
            leases.renew(self.alias, self._in_flight.values(), self.lease)
            beat = database_now(connections[self.alias])
            claimed = {"last_claimed_at": beat} if self._claimed_since_beat else {}
            WorkerRow.objects.using(self.alias).filter(name=self.id).update(last_heartbeat=beat, lost=False, **claimed)
            self._claimed_since_beat = False
            self._due["renew"] = now + self.lease / 3
        if now >= self._due["refresh"]:
            self._refresh_definitions()
            self._due["refresh"] = now + REFRESH_EVERY

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
                    self._release(not_started)
                    not_started = []
                self._time_out()
                self._record()
                running = list(self._in_flight.values())
                if not running:
                    return
                if time.monotonic() >= deadline:
                    released = self._release(running)
                    logger.warning("shutdown timeout: returned %s running job(s) to the queue", released)
                    return
                self._renew()
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable during shutdown: %s", exc)
                close_quietly(self.alias)
                if time.monotonic() >= deadline:
                    return  # leases expire and other workers rescue the jobs
            self._wake.clear()
            self._wake.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def _release(self, jobs: Sequence[Job]) -> int:
        released = leases.finish(self.alias, [Finish(job, RELEASED, worker=self.id) for job in jobs])
        for job in jobs:
            self._in_flight.pop(job.id, None)
        return len(released)

    # -- handler threads ------------------------------------------------------------------------

    def _start_handler_thread(self) -> None:
        self._handlers += 1
        threading.Thread(target=self._handler_thread, name=f"doctorjob-{self._handlers}", daemon=True).start()

    def _time_out(self) -> None:
        """Fail the attempts that ran past their timeout: each is recorded as failed ("timed out
        after N s") and retried with backoff, its thread abandoned and replaced, so the worker
        keeps its concurrency. When more threads are stuck than it has, it stops claiming and
        exits once the rest is done, for its supervisor to start a fresh process."""
        if not self._running:
            return
        now = time.monotonic()
        for thread, (job, deadline, timeout) in list(self._running.items()):
            with self._timing:
                if now < deadline or self._running.get(thread, (None,))[0] is not job:
                    continue  # not due, or the thread finished the job meanwhile
                del self._running[thread]
                self._abandoned.add(thread)
            logger.warning(
                "timed out job_id=%s name=%s attempt=%s after %gs; its thread is abandoned",
                job.id,
                job.name,
                job.attempts,
                timeout,
            )
            self._unrecorded.append(self._failed(job, leases.retry_or_dead(job), f"timed out after {timeout:g} s"))
            with self._timing:
                self._abandoned = {t for t in self._abandoned if t.is_alive()}
            if len(self._abandoned) > self.concurrency and not self.recycle:
                logger.error(
                    "%s handler threads are stuck in timed-out jobs (concurrency %s): finishing the "
                    "rest, then exiting for a fresh process",
                    len(self._abandoned),
                    self.concurrency,
                )
                self.recycle = True
                self.stop()
            if not self._stopping.is_set():
                self._start_handler_thread()

    def _handler_thread(self) -> None:
        # This thread's connection objects, made once (unconnected until a handler uses one):
        # looking them up through `connections` after every job costs more than a no-op job.
        me, own = threading.current_thread(), []
        for alias in connections:
            try:
                own.append(connections[alias])
            except ImproperlyConfigured:  # its backend cannot load: no handler can use it either
                pass
        watchdog = self.watchdog
        slot = watchdog.take_slot() if watchdog else 0
        try:
            self._run_jobs(me, own, slot)
        finally:
            if watchdog:
                watchdog.give_back(slot)

    def _run_jobs(self, me: threading.Thread, own: Sequence[BaseDatabaseWrapper], slot: int) -> None:
        watchdog = self.watchdog
        while True:
            job = self._todo.get()
            if job is None:
                connections.close_all()  # this thread's connections
                return
            if self._stopping.is_set() and self.shutdown_timeout == 0:
                continue
            if watchdog:
                watchdog.running(slot, job.id)  # before it starts: should we die now, it is charged
            try:
                outcome = self._execute(job, me)
            except BaseException as exc:  # noqa: BLE001 - never lose the thread, whatever went wrong
                logger.exception("worker error while running job_id=%s name=%s", job.id, job.name)
                outcome = self._failed(
                    job, leases.retry_or_dead(job), f"worker error: {_describe(exc)}", _traceback(exc)
                )
            finally:
                with self._timing:
                    self._running.pop(me, None)
                    abandoned = me in self._abandoned
                if watchdog:
                    watchdog.running(slot, 0)
            if abandoned:  # timed out: recorded, and replaced
                connections.close_all()
                return
            _tidy_connections(own)
            self._done.put(outcome)
            # Wake the main thread only when it has work: claiming more (the queue of waiting
            # jobs runs low) or saving outcomes in bulk; otherwise it saves them on its timer.
            if self._todo.qsize() <= self._low_water:
                self._wake.set()

    def _execute(self, job: Job, thread: threading.Thread | None) -> tuple[Finish, str]:
        """Run one job's handler and say what to record: succeeded, retrying (with the backoff's
        delay), dead or skipped."""
        started = time.monotonic()
        job_type = registry.get(job.name)
        if job_type is None:
            return self._failed(
                job, DEAD, f"unknown job '{job.name}': no handler is registered under that name in this worker"
            )
        try:
            job_type.validate(job.payload)
        except InvalidPayload as exc:
            return self._failed(job, DEAD, str(exc))
        min_version = self._min_version.get(job.name, job_type.min_version)
        if job.version < min_version:
            return self._failed(
                job,
                SKIPPED,
                f"version {job.version} of job '{job.name}' is below its minimal supported version {min_version}",
            )
        ctx = JobContext(
            job.id,
            job.name,
            job.queue,
            job.attempts,
            job.max_attempts,
            job.key,
            job.created_at,
            self.id,
            self.alias,
            job.lease_id,
            job.progress,
            _sink=self.progress_sink,
        )
        set_current_job(ctx, job.version)
        send_robust(job_started, job=job)
        timeout = job_type.timeout or settings.TIMEOUT
        if timeout and thread is not None:  # doctorjob.testing runs jobs on no handler thread
            self._running[thread] = (job, time.monotonic() + timeout, timeout)
        try:
            if job_type.atomic:
                # The handler's writes and the success mark commit together or not at all.
                with transaction.atomic(using=self.alias):
                    if timeout and connections[self.alias].vendor == "postgresql":
                        # Past the timeout, the database cancels the handler's statements too.
                        with connections[self.alias].cursor() as cursor:
                            cursor.execute(
                                "SELECT set_config('statement_timeout', %s, true)", [str(int(timeout * 1000))]
                            )
                    result = _jsonable(job_type.call(job.payload, ctx), ctx)
                    done = Finish(job, SUCCEEDED, result, duration=time.monotonic() - started, worker=self.id)
                    if not leases.finish(self.alias, [done]):
                        raise LeaseLost(f"job {job.id} is no longer held by this worker")
                return done, DONE
            result = _jsonable(job_type.call(job.payload, ctx), ctx)
            return Finish(job, SUCCEEDED, result, duration=time.monotonic() - started, worker=self.id), TODO
        except LeaseLost:
            return Finish(job, SUCCEEDED, duration=time.monotonic() - started, worker=self.id), LOST
        except PermanentError as exc:
            return self._failed(job, DEAD, _describe(exc), _traceback(exc), started)
        except BaseException as exc:  # noqa: BLE001 - a handler must never kill its thread
            return self._failed(job, leases.retry_or_dead(job), _describe(exc), _traceback(exc), started)
        finally:
            set_current_job(None)
            ctx.close()

    def _failed(
        self, job: Job, outcome: str, error: str, tb: str = "", started: float | None = None
    ) -> tuple[Finish, str]:
        duration = 0.0 if started is None else time.monotonic() - started
        return leases.failed(job, outcome, error, worker=self.id, traceback=tb, duration=duration), TODO

    # -- LISTEN/NOTIFY --------------------------------------------------------------------------

    def _start_listener(self) -> str:
        """LISTEN where it can work, and say how this worker wakes up (for the start-up banner)."""
        poll = f"poll every {self.poll_interval}s"
        alias = settings.LISTEN_DATABASE
        if alias is False:
            return poll
        if alias is None:
            alias = self.alias
            if behind_pooler(connections[alias]):  # a LISTEN there hears nothing after its transaction
                return (
                    f"{poll} (no LISTEN through the pooler of '{alias}', which sets "
                    "DISABLE_SERVER_SIDE_CURSORS; DOCTORJOB['LISTEN_DATABASE'] can name a direct alias)"
                )
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
            conn.health_check_enabled = True  # type: ignore[attr-defined]  # Django 4.1+, not in the stubs


def _describe(exc: BaseException) -> str:
    """``Class: message``, storable whatever the exception holds; an exception whose ``str()``
    raises is described by its class."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - any exception's __str__ may be broken
        return f"{name} (its message could not be read: str() raised)"
    return storable_text(f"{name}: {text}" if text else name)


def _traceback(exc: BaseException) -> str:
    return storable_text("".join(traceback.format_exception(exc)))


def _jsonable(result: Any, ctx: JobContext) -> Any:
    """The result to save: None (with a warning) if it is not JSON or nested too deep, with
    NULs and lone surrogates escaped."""
    problem = first_problem(result, "result")
    if problem is None:
        return result
    where, value, why = problem
    if why in (NUL, SURROGATE):
        return storable(result)
    what = (
        f"nested deeper than {MAX_DEPTH} levels"
        if why == DEPTH
        else "an integer too large for JSON"
        if why == BIG_INT
        else f"a {type(value).__name__}, not JSON"
    )
    ctx.logger.warning("%s is %s: the result is not saved", where, what)
    return None
