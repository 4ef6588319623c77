"""Measure doctorjob against a raw-SQL psycopg baseline: the library behind ``manage.py bench_jobs``.

Everything happens in a scratch database created on the project's PostgreSQL server
(``<name>_bench``) and dropped at the end, so the project's own jobs are never touched and no
running worker of the project hears the bench's NOTIFYs (channels are per database).

doctorjob's workers are real ``run_jobs`` commands, each in its own process started as
``python -m doctorjob.benchmark worker``; the baseline is a plain table drained by a short
psycopg loop (``python -m doctorjob.benchmark raw-worker``). Only the bench imports this module,
and it registers its two job handlers explicitly (``register_jobs()``), so they never exist in
a normal project.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from .exceptions import DoctorJobError

NOOP = "doctorjob.bench.noop"
PROBE = "doctorjob.bench.probe"
SCRATCH_ALIAS = "doctorjob_bench"
SCRATCH_MARK = "doctorjob bench_jobs scratch database (safe to drop)"
PROBE_FILE_ENV = "DOCTORJOB_BENCH_PROBE_FILE"
CONNINFO_ENV = "DOCTORJOB_BENCH_CONNINFO"
POLL_EVERY = 0.02      # how often the queue is counted during a drain
PROBE_SPACING = 0.02   # latency probes are enqueued on this fixed schedule
DRAIN_CAP = 600.0      # a drain still running after this is stopped and reported as capped
RAW_BATCH = 100
RAW_IDLE = 0.01        # the raw drain loop's sleep when it finds nothing

# Smaller counts for a smoke run of under a minute; explicit options still win.
QUICK = {"jobs": 2_000, "enqueue_jobs": 300, "bulk_jobs": 5_000, "probes": 30, "memory_jobs": (1_000, 5_000)}


class BenchmarkError(DoctorJobError):
    """The benchmark cannot run here, or a measure failed; the message says which and why."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """What to measure and how much; ``run_jobs_args`` go to every doctorjob worker."""

    database: str | None = None
    jobs: int = 20_000
    enqueue_jobs: int = 5_000
    bulk_jobs: int = 50_000
    probes: int = 200
    processes: tuple[int, ...] = (1, 2)
    memory_jobs: tuple[int, int] = (10_000, 100_000)
    skip_memory: bool = False
    reps: int = 1
    run_jobs_args: tuple[str, ...] = ()
    poll_interval: float | None = None


# -- job handlers (registered by register_jobs(), never at import) -------------------------------

_probe_lock = threading.Lock()


def noop(payload: Any, ctx: Any) -> None:
    """Do nothing: a drain of these measures doctorjob's own cost per job."""


def probe(payload: Any, ctx: Any) -> None:
    """Append enqueue→start latency, taken first thing, to the file the bench reads."""
    latency = time.time() - payload["t"]
    with _probe_lock, open(os.environ[PROBE_FILE_ENV], "a") as f:
        f.write(f"{latency:.6f}\n")


def register_jobs() -> None:
    """Register the bench's handlers in this process (idempotent)."""
    from .registry import job, registry

    for name, func in ((NOOP, noop), (PROBE, probe)):
        if name not in registry:
            job(name)(func)


# -- the scratch database ------------------------------------------------------------------------

def add_scratch_alias(source: str, dbname: str) -> str:
    """Register SCRATCH_ALIAS: the ``source`` alias' settings (CONN_MAX_AGE included) on ``dbname``."""
    from django.db import connections

    settings_dict = copy.deepcopy(connections[source].settings_dict)
    settings_dict["NAME"] = dbname
    connections.settings[SCRATCH_ALIAS] = settings_dict  # the same dict as settings.DATABASES
    return SCRATCH_ALIAS


def libpq_params(alias: str) -> dict[str, Any]:
    """Connection keywords for a plain psycopg connection to ``alias``: Django's minus its adapters."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    return params


class ScratchDatabase:
    """A database of the bench's own next to ``source``'s, created, migrated and dropped by it."""

    def __init__(self, source: str) -> None:
        from django.db import connections

        self.source = source
        name = connections[source].settings_dict["NAME"] or "doctorjob"
        self.name = f"{name[:57]}_bench"  # PostgreSQL truncates identifiers at 63 bytes
        self.alias = SCRATCH_ALIAS
        self._admin: Any = None
        self._created = False  # drop() must never drop a database this run did not create

    def create(self) -> None:
        """Create and migrate the scratch database; refuse to reuse a database that is not ours."""
        import psycopg
        from psycopg import sql
        from django.core.management import call_command

        params = libpq_params(self.source)
        for maintenance_db in ("postgres", "template1"):
            try:
                self._admin = psycopg.connect(**{**params, "dbname": maintenance_db}, autocommit=True)
                break
            except psycopg.OperationalError as exc:
                error = exc
        else:
            raise BenchmarkError(f"cannot connect to the server of database alias '{self.source}': {error}")
        # One run at a time per scratch database: a second run would drop the first one's.
        lock = zlib.crc32(self.name.encode())
        if not self._admin.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()[0]:
            raise BenchmarkError(f"another bench_jobs run is using the scratch database '{self.name}'")
        mark = self._admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (self.name,)
        ).fetchone()
        if mark is not None and mark[0] != SCRATCH_MARK:
            raise BenchmarkError(f"a database named '{self.name}' already exists and was not created by "
                                 "bench_jobs; drop or rename it to run the benchmark")
        ident = sql.Identifier(self.name)
        if mark is not None:  # left over by an interrupted run
            self._drop()
        try:
            self._admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        except psycopg.Error as exc:
            raise BenchmarkError(f"cannot create the scratch database '{self.name}' (the user needs "
                                 f"CREATEDB): {exc}") from exc
        self._created = True
        self._admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(SCRATCH_MARK)))
        add_scratch_alias(self.source, self.name)
        call_command("migrate", database=self.alias, verbosity=0, interactive=False)
        from .models import Job

        with psycopg.connect(**self.params, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass(%s)", (Job._meta.db_table,)).fetchone()[0]
        if found is None:
            raise BenchmarkError(f"migrate did not create doctorjob's tables in '{self.name}': does a "
                                 "database router keep doctorjob off new aliases?")

    @property
    def params(self) -> dict[str, Any]:
        return libpq_params(self.alias)

    def drop(self) -> None:
        """Close every connection to the scratch database and drop it, if this run created it."""
        from django.db import connections

        if self.alias in connections:
            connections[self.alias].close()
            del connections.settings[self.alias]
        if self._admin is None:
            return
        try:
            if self._created:
                self._drop()
                self._created = False
        finally:
            self._admin.close()  # also releases the advisory lock
            self._admin = None

    def _drop(self) -> None:
        from psycopg import sql

        force = " WITH (FORCE)" if self._admin.info.server_version >= 130000 else ""
        self._admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(self.name)))


# -- the raw baseline's SQL (a plain table, no framework) -----------------------------------------

RAW_TABLE = "bench_raw_job"
RAW_CHANNEL = "bench_raw"
RAW_DDL = f"""
CREATE TABLE {RAW_TABLE} (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {RAW_TABLE}_queued ON {RAW_TABLE} (id) WHERE status = 'queued'
"""
RAW_INSERT = f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)"
# The same single-statement shape doctorjob uses: the NOTIFY is delivered at commit.
RAW_INSERT_NOTIFY = (f"WITH ins AS (INSERT INTO {RAW_TABLE} (payload) VALUES (%s) RETURNING id) "
                     f"SELECT pg_notify('{RAW_CHANNEL}', '') FROM ins")
RAW_INSERT_MANY = f"INSERT INTO {RAW_TABLE} (payload) SELECT unnest(%s::jsonb[])"
RAW_CLAIM = f"""
UPDATE {RAW_TABLE} SET status = 'running'
WHERE id IN (SELECT id FROM {RAW_TABLE} WHERE status = 'queued' ORDER BY id
             FOR UPDATE SKIP LOCKED LIMIT %s)
RETURNING id, payload
"""
RAW_COMPLETE = f"UPDATE {RAW_TABLE} SET status = 'done' WHERE id = ANY(%s)"


def raw_worker(*, batch: int, idle: float, listen: bool) -> None:
    """Claim ``batch`` jobs at a time and mark them done, until killed; log probe latencies."""
    import psycopg

    probe_file = os.environ.get(PROBE_FILE_ENV)
    with psycopg.connect(os.environ[CONNINFO_ENV], autocommit=True) as conn:
        if listen:
            conn.execute(f"LISTEN {RAW_CHANNEL}")
        while True:
            rows = conn.execute(RAW_CLAIM, (batch,)).fetchall()
            if rows:
                if probe_file:
                    now = time.time()
                    with open(probe_file, "a") as f:
                        f.writelines(f"{now - payload['t']:.6f}\n" for _, payload in rows if "t" in payload)
                conn.execute(RAW_COMPLETE, ([row[0] for row in rows],))
            elif listen:
                # psycopg keeps notifications that arrived during the claim: none is missed.
                for _ in conn.notifies(timeout=idle, stop_after=1):
                    pass
            else:
                time.sleep(idle)


def doctorjob_worker(*, source: str, dbname: str, notify: bool, run_jobs_args: Sequence[str]) -> None:
    """Run the real ``run_jobs`` command on the scratch database (Django is set up already)."""
    from django.conf import settings as django_settings
    from django.core.management import call_command
    from django.test.utils import override_settings

    register_jobs()
    alias = add_scratch_alias(source, dbname)
    overrides = dict(getattr(django_settings, "DOCTORJOB", {}), NOTIFY=notify)
    if overrides.get("LISTEN_DATABASE") is not False:
        overrides["LISTEN_DATABASE"] = None  # listen where the bench notifies: the scratch database
    override_settings(DEBUG=False, DOCTORJOB=overrides).enable()  # DEBUG: see run()
    # As in the peer harness: per-job INFO lines would dominate the cost of no-op jobs.
    logging.getLogger("doctorjob").setLevel(logging.WARNING)
    call_command("run_jobs", *run_jobs_args, database=alias, verbosity=0)


# -- measuring -----------------------------------------------------------------------------------

def run(options: Options, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Create the scratch database, take every measure ``options.reps`` times, drop it; return
    the report (environment, options, every repetition and the medians)."""
    from django.conf import settings as django_settings
    from django.db import connections, router
    from django.test.utils import override_settings

    from .conf import settings
    from .models import Job

    source = options.database or router.db_for_write(Job)
    if source not in connections:
        raise BenchmarkError(f"unknown database alias '{source}'")
    if connections[source].vendor != "postgresql":
        raise BenchmarkError(f"bench_jobs runs on PostgreSQL only; database alias '{source}' is "
                             f"{connections[source].vendor}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise BenchmarkError("bench_jobs needs psycopg 3 (pip install 'psycopg[binary]')") from None
    settings_module = django_settings.SETTINGS_MODULE  # override_settings() below hides it
    if not settings_module:
        raise BenchmarkError("bench_jobs starts worker processes, which need a settings module "
                             "(DJANGO_SETTINGS_MODULE or --settings), not settings.configure()")
    register_jobs()
    db = ScratchDatabase(source)
    started = time.time()
    load_before = _loadavg()
    progress(f"creating and migrating the scratch database '{db.name}'")
    try:
        db.create()
        env = environment(db, options, source, load_before)
        # Enqueue is measured in autocommit, one job per transaction, whatever the project requires;
        # DEBUG off as in production (its query log would be measured, and would grow the worker).
        bench_settings = {**getattr(django_settings, "DOCTORJOB", {}), "REQUIRE_TRANSACTION": False}
        with override_settings(DEBUG=False, DOCTORJOB=bench_settings), \
                tempfile.TemporaryDirectory(prefix="doctorjob-bench-") as workdir:
            bench = _Bench(options, db, workdir, settings_module, settings.POLL_INTERVAL, progress)
            try:
                report = bench.run()
            finally:
                bench.close()
    finally:
        db.drop()
    report["environment"] = env
    report["environment"]["seconds"] = round(time.time() - started, 1)
    report["environment"]["load_average_end"] = _loadavg()
    return report


class _Bench:
    def __init__(self, options: Options, db: ScratchDatabase, workdir: str, settings_module: str,
                 default_poll: float, progress: Callable[[str], None]) -> None:
        import psycopg
        from django.db import connections

        from .models import Job

        self.options, self.db, self.workdir, self.progress = options, db, workdir, progress
        self.settings_module = settings_module
        self.poll = options.poll_interval if options.poll_interval is not None else default_poll
        self.monitor = psycopg.connect(**db.params, autocommit=True)  # counts, truncates, checkpoints
        self.monitor.execute(RAW_DDL)
        self.job_table = connections[db.alias].ops.quote_name(Job._meta.db_table)
        self.notes: list[str] = []
        self.logs: dict[int, str] = {}
        self._spawned = 0

    def close(self) -> None:
        self.monitor.close()

    def run(self) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {}
        others: dict[str, list[float]] = {}

        def measure(key: str, take: Callable[[], dict[str, Any]]) -> None:
            # What other processes (tests, builds) took from the machine meanwhile says how
            # far to trust the number.
            before, t0 = _cpu_by_process(), time.monotonic()
            result = take()
            share = _others_cpu(before, _cpu_by_process(), self.db.name) / ((time.monotonic() - t0) * _cpus())
            runs.setdefault(key, []).append(result)
            others.setdefault(key, []).append(share)
            self.progress(f"    {_brief(result)}")

        for rep in range(1, self.options.reps + 1):
            for key, take in self._plan():
                self.progress(f"[{rep}/{self.options.reps}] {key}")
                measure(key, take)
        if not self.options.skip_memory:  # once: a 100k-job drain per repetition would add little
            small, large = self.options.memory_jobs
            self.progress(f"memory: one worker draining {small:,} jobs, then up to {large:,}")
            measure("memory", self.memory)
        return {
            "options": asdict(self.options),
            "runs": runs,
            "results": {key: _median_of(results) for key, results in runs.items()},
            "others_cpu": {key: round(max(shares), 3) for key, shares in others.items()},
            "notes": self.notes,
        }

    def _plan(self) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
        """Every measure of one repetition, doctorjob and baseline side by side to share drift."""
        yield "enqueue/doctorjob", lambda: self.enqueue_one("doctorjob")
        yield "enqueue/doctorjob-no-notify", lambda: self.enqueue_one("doctorjob", notify=False)
        yield "enqueue/raw", lambda: self.enqueue_one("raw")
        yield "bulk/doctorjob", lambda: self.enqueue_bulk("doctorjob")
        yield "bulk/raw", lambda: self.enqueue_bulk("raw")
        for processes in self.options.processes:
            for system in ("doctorjob", "raw"):
                yield f"drain/{system}/{processes}", lambda s=system, p=processes: self.drain(s, p)
        for notify in (True, False):
            for system in ("doctorjob", "raw"):
                key = f"latency/{system}/{'notify' if notify else 'poll'}"
                yield key, lambda s=system, n=notify: self.latency(s, n)

    # -- the measures ---------------------------------------------------------------------------

    def enqueue_one(self, system: str, notify: bool = True) -> dict[str, Any]:
        """``n`` jobs, one per autocommit transaction, after one warm-up enqueue."""
        n = self.options.enqueue_jobs
        self._reset()
        if system == "raw":
            import psycopg
            from psycopg.types.json import Jsonb

            with psycopg.connect(**self.db.params, autocommit=True) as conn:
                conn.execute(RAW_INSERT, (Jsonb({"n": -1}),))
                self._settle()
                t0 = time.perf_counter()
                for i in range(n):
                    conn.execute(RAW_INSERT, (Jsonb({"n": i}),))
                seconds = time.perf_counter() - t0
        else:
            from .outbox import enqueue

            with self._notify(notify):
                enqueue(NOOP, {"n": -1}, using=self.db.alias)
                self._settle()
                t0 = time.perf_counter()
                for i in range(n):
                    enqueue(NOOP, {"n": i}, using=self.db.alias)
                seconds = time.perf_counter() - t0
        return {"jobs": n, "seconds": seconds, "rate": n / seconds}

    def enqueue_bulk(self, system: str) -> dict[str, Any]:
        """``n`` jobs in one call (one statement, autocommit); building the items is not timed."""
        n = self.options.bulk_jobs
        self._reset()
        self._settle()
        if system == "raw":
            import psycopg

            payloads = [{"n": i} for i in range(n)]
            with psycopg.connect(**self.db.params, autocommit=True) as conn:
                conn.execute("SELECT 1")
                t0 = time.perf_counter()
                conn.execute(RAW_INSERT_MANY, ([json.dumps(p) for p in payloads],))
                seconds = time.perf_counter() - t0
        else:
            from django.db import connections

            from .outbox import enqueue_many

            items = [(NOOP, {"n": i}) for i in range(n)]
            connections[self.db.alias].ensure_connection()
            t0 = time.perf_counter()
            enqueue_many(items, using=self.db.alias)
            seconds = time.perf_counter() - t0
        written = self._remaining(system)
        if written != n:
            raise BenchmarkError(f"bulk enqueue ({system}) wrote {written} jobs, expected {n}")
        return {"jobs": n, "seconds": seconds, "rate": n / seconds}

    def drain(self, system: str, processes: int) -> dict[str, Any]:
        """Clock from the first completed job to an empty queue (worker start-up is not counted)."""
        n = self.options.jobs
        self._reset()
        self._fill(system, n)
        self._settle(vacuum=True)
        procs = self._start(system, processes, listen=False, idle=RAW_IDLE)
        spawned = time.perf_counter()
        first: tuple[float, int] | None = None
        capped = False
        try:
            while True:
                left, now = self._remaining(system), time.perf_counter()
                if first is None and left < n:
                    first = (now, left)
                if left == 0:
                    break
                if now - spawned > DRAIN_CAP:
                    capped = True
                    break
                self._check_alive(procs)
                time.sleep(POLL_EVERY)
        finally:
            self._stop(procs)
        result = {"jobs": n, "processes": processes, "gross_seconds": now - spawned, "capped": capped}
        if first is not None and now > first[0]:
            result.update(seconds=now - first[0], rate=(first[1] - left) / (now - first[0]),
                          startup_seconds=first[0] - spawned)
        else:  # drained between two polls: only the gross figure (start-up included) is known
            result.update(rate=(n - left) / (now - spawned), gross_only=True)
        return result

    def latency(self, system: str, notify: bool) -> dict[str, Any]:
        """Enqueue→handler-start latency of an idle worker: probes on a fixed schedule."""
        n = self.options.probes
        self._reset()
        self._settle()
        path = os.path.join(self.workdir, f"probes-{system}-{notify}.txt")
        open(path, "w").close()
        # Without NOTIFY the raw loop sleeps the same poll interval as doctorjob's worker.
        procs = self._start(system, 1, notify=notify, listen=notify, idle=self.poll, probe_file=path)
        try:
            with self._notify(notify), self._producer(system, notify) as send:
                send()  # warm-up: once the worker has run it, it is up and its statements are ready
                self._wait(lambda: _lines(path) >= 1, procs, 60 + self.poll, "the warm-up probe")
                time.sleep(1.0)  # let the worker go idle
                open(path, "w").close()
                t0 = time.perf_counter()
                for i in range(n):
                    _sleep_until(t0 + i * PROBE_SPACING)
                    send()
            self._wait(lambda: _lines(path) >= n, procs, 30 + 2 * self.poll, f"{n} latency probes")
        finally:
            self._stop(procs)
        with open(path) as f:
            ms = sorted(float(line) * 1000 for line in f if line.strip())
        return {"probes": n, "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95),
                "p99_ms": _percentile(ms, 99), "max_ms": ms[-1], "poll_interval": None if notify else self.poll}

    def memory(self) -> dict[str, Any]:
        """VmRSS of one run_jobs process after ``small`` drained jobs and after ``large`` in total."""
        small, large = self.options.memory_jobs
        self._reset()
        self._settle()
        procs = self._start("doctorjob", 1)
        pid = procs[0].pid
        try:
            self._fill("doctorjob", 1)  # warm-up: imports, connections, statement caches
            self._wait_empty("doctorjob", procs)
            idle = _rss_kib(pid)
            self._fill("doctorjob", small)
            self._wait_empty("doctorjob", procs)
            after_small = _rss_kib(pid)
            for done in range(small, large, 50_000):
                self._fill("doctorjob", min(50_000, large - done))
            self._wait_empty("doctorjob", procs)
            after_large = _rss_kib(pid)
        finally:
            self._stop(procs)
        growth = None
        if after_small and after_large:
            growth = 100.0 * (after_large - after_small) / after_small
        return {"small": small, "large": large, "idle_kib": idle, "after_small_kib": after_small,
                "after_large_kib": after_large, "growth_pct": growth}

    # -- helpers --------------------------------------------------------------------------------

    def _reset(self) -> None:
        """Empty both queues so every measure starts from the same tables."""
        self.monitor.execute(f"TRUNCATE {self.job_table}, {RAW_TABLE} RESTART IDENTITY CASCADE")

    def _settle(self, vacuum: bool = False) -> None:
        """Same database state before each timed phase: fresh statistics, dirty pages written."""
        import psycopg

        if vacuum:
            self.monitor.execute(f"VACUUM ANALYZE {self.job_table}, {RAW_TABLE}")
        try:
            self.monitor.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            note = "CHECKPOINT needs superuser or pg_checkpoint: skipped before timed phases"
            if note not in self.notes:
                self.notes.append(note)

    def _fill(self, system: str, n: int) -> None:
        if system == "raw":
            self.monitor.execute(RAW_INSERT_MANY, ([json.dumps({"n": i}) for i in range(n)],))
        else:
            from .outbox import enqueue_many

            enqueue_many([(NOOP, {"n": i}) for i in range(n)], using=self.db.alias)

    def _remaining(self, system: str) -> int:
        """Queued plus running jobs: a job leaves the count only once its completion is recorded."""
        table = RAW_TABLE if system == "raw" else self.job_table
        return self.monitor.execute(
            f"SELECT count(*) FROM {table} WHERE status IN ('queued', 'running')").fetchone()[0]

    @contextmanager
    def _notify(self, notify: bool) -> Iterator[None]:
        from django.conf import settings as django_settings
        from django.test.utils import override_settings

        with override_settings(DOCTORJOB={**getattr(django_settings, "DOCTORJOB", {}), "NOTIFY": notify}):
            yield

    @contextmanager
    def _producer(self, system: str, notify: bool) -> Iterator[Callable[[], None]]:
        """A function enqueueing one latency probe that carries its own enqueue time."""
        if system == "raw":
            import psycopg
            from psycopg.types.json import Jsonb

            statement = RAW_INSERT_NOTIFY if notify else RAW_INSERT
            with psycopg.connect(**self.db.params, autocommit=True) as conn:
                def send_raw() -> None:
                    conn.execute(statement, (Jsonb({"t": time.time()}),))

                yield send_raw
        else:
            from .outbox import enqueue

            def send() -> None:
                enqueue(PROBE, {"t": time.time()}, using=self.db.alias)

            yield send

    def _start(self, system: str, count: int, *, notify: bool = True, listen: bool = False,
               idle: float = RAW_IDLE, probe_file: str | None = None) -> list[subprocess.Popen]:
        """Start ``count`` worker processes of ``system``; their output goes to log files."""
        from psycopg.conninfo import make_conninfo

        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # what this process imports
        if probe_file:
            env[PROBE_FILE_ENV] = probe_file
        command = [sys.executable, "-m", "doctorjob.benchmark"]
        if system == "raw":
            env[CONNINFO_ENV] = make_conninfo(**self.db.params)
            command += ["raw-worker", "--batch", str(RAW_BATCH), "--idle", str(idle)]
            command += ["--listen"] if listen else []
        else:
            command += ["worker", "--settings", self.settings_module, "--source", self.db.source,
                        "--dbname", self.db.name, "--run-jobs-args", json.dumps(list(self.options.run_jobs_args))]
            command += [] if notify else ["--no-notify"]
        procs = []
        for _ in range(count):
            self._spawned += 1
            log = os.path.join(self.workdir, f"{system}-{self._spawned}.log")
            with open(log, "wb") as out:
                proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            self.logs[proc.pid] = log
            procs.append(proc)
        return procs

    def _stop(self, procs: Sequence[subprocess.Popen]) -> None:
        """SIGTERM (a doctorjob worker shuts down gracefully), then SIGKILL after 15 s."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _check_alive(self, procs: Sequence[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is not None:
                with open(self.logs[proc.pid], errors="replace") as f:
                    tail = "".join(f.readlines()[-15:])
                raise BenchmarkError(f"a worker process exited early (code {proc.returncode}); "
                                     f"its output ends with:\n{tail}")

    def _wait(self, done: Callable[[], bool], procs: Sequence[subprocess.Popen], timeout: float,
              what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self._check_alive(procs)
            if time.monotonic() > deadline:
                raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_EVERY)

    def _wait_empty(self, system: str, procs: Sequence[subprocess.Popen]) -> None:
        self._wait(lambda: self._remaining(system) == 0, procs, DRAIN_CAP, "the queue to empty")
        time.sleep(0.2)  # let the worker finish its round before its memory is read


# -- environment, noise and statistics -------------------------------------------------------------

def environment(db: ScratchDatabase, options: Options, source: str, load_before: list[float]) -> dict[str, Any]:
    """Machine, versions and settings, for the report header."""
    import django
    import psycopg
    from django.conf import settings as django_settings
    from django.db import connections

    from . import __version__
    from .conf import settings

    def first(path: str, prefix: str) -> str:
        try:
            with open(path) as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), "?")
        except OSError:
            return "?"

    with psycopg.connect(**db.params, autocommit=True) as conn:
        server = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                  for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")}
    source_settings = connections[source].settings_dict
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "cpus": _cpus(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory": _gib(first("/proc/meminfo", "MemTotal")),
        "load_average_start": load_before,
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "doctorjob": __version__,
        "postgresql": server,
        "database": {"source_alias": source, "scratch": db.name, "host": source_settings.get("HOST") or "local",
                     "port": source_settings.get("PORT") or "default",
                     "CONN_MAX_AGE": source_settings.get("CONN_MAX_AGE")},
        "DEBUG": django_settings.DEBUG,
        "DOCTORJOB": {name: str(getattr(settings, name)) for name in _SHOWN_SETTINGS},
        "worker": " ".join(["run_jobs -v 0", *options.run_jobs_args]) + (
            "" if options.run_jobs_args else " (default options)") + ", doctorjob logger at WARNING",
        "poll_interval": options.poll_interval if options.poll_interval is not None else settings.POLL_INTERVAL,
    }


# The settings that change what the bench measures (BACKOFF and JOBS do not).
_SHOWN_SETTINGS = ("NOTIFY", "LISTEN_DATABASE", "CONCURRENCY", "BATCH_SIZE", "POLL_INTERVAL", "LEASE",
                   "KEEP_SUCCEEDED", "REQUIRE_TRANSACTION")


def _gib(meminfo: str) -> str:
    kib = meminfo.split()[0]
    return f"{int(kib) / 2**20:.1f} GiB" if kib.isdigit() else meminfo


def _cpus() -> int:
    return os.cpu_count() or 1


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# PostgreSQL's shared processes work for every database, the bench's included: not "others".
_PG_SHARED = ("checkpointer", "walwriter", "background writer", "autovacuum launcher",
              "logical replication launcher", "archiver", "stats collector", " -D ", "config_file")


def _cpu_by_process() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command line, CPU seconds used so far), from /proc (empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        found[int(name)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _others_cpu(before: dict[int, tuple[int, str, float]], after: dict[int, tuple[int, str, float]],
                dbname: str) -> float:
    """CPU seconds used between the two snapshots by processes that are not this bench: not us or
    our workers, not a PostgreSQL backend of the scratch database, not PostgreSQL's shared ones."""
    ours = {os.getpid()}
    grew = True
    while grew:  # descendants, whatever their depth
        new = {pid for pid, (ppid, _, _) in after.items() if ppid in ours} - ours
        ours |= new
        grew = bool(new)
    total = 0.0
    for pid, (_, cmdline, cpu) in after.items():
        if pid in ours:
            continue
        if cmdline.startswith("postgres") or "/postgres " in cmdline:
            if dbname in cmdline.split() or any(word in cmdline for word in _PG_SHARED):
                continue
        previous = before.get(pid)
        total += cpu - (previous[2] if previous and previous[1] == cmdline else 0.0)
    return total


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), None)
    except OSError:
        return None


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values, as the peer harness computes it."""
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def _median_of(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the repetitions; other fields from the first one."""
    merged = dict(results[0])
    for key, value in merged.items():
        values = [r.get(key) for r in results]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = statistics.median(values)
    return merged


def _brief(result: dict[str, Any]) -> str:
    if "rate" in result:
        return f"{result['rate']:,.0f} jobs/s"
    if "p50_ms" in result:
        return f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    if "growth_pct" in result:
        return f"VmRSS {_mib(result['after_small_kib'])} → {_mib(result['after_large_kib'])}"
    return ""


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


# -- the report ------------------------------------------------------------------------------------

def format_report(report: dict[str, Any]) -> str:
    """The terminal table: header, throughput, latency, memory."""
    env, results, others = report["environment"], report["results"], report["others_cpu"]
    options = report["options"]
    pg = env["postgresql"]
    db = env["database"]
    reps = options["reps"]
    lines = [
        f"doctorjob bench_jobs — {env['date']} — {env['command']}",
        f"machine    {env['cpus']} CPUs, {env['cpu_model']}, {env['memory']} RAM; load average (1/5/15 min) "
        f"before the run {_loads(env['load_average_start'])}, after {_loads(env['load_average_end'])}",
        f"software   Python {env['python']}, Django {env['django']}, psycopg {env['psycopg']}, doctorjob "
        f"{env['doctorjob']}, PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']})",
        f"database   scratch database '{db['scratch']}' on {db['host']}:{db['port']} (settings of alias "
        f"'{db['source_alias']}', CONN_MAX_AGE={db['CONN_MAX_AGE']}), created and dropped by this run",
        "DOCTORJOB  " + ", ".join(f"{k}={v}" for k, v in env["DOCTORJOB"].items()),
        f"worker     {env['worker']}",
        f"bench      enqueues in autocommit (REQUIRE_TRANSACTION off) and DEBUG off in every process "
        f"(the project has DEBUG={env['DEBUG']})",
        f"runs       {'median of ' + str(reps) + ' repetitions' if reps > 1 else '1 repetition'}; "
        f"took {env['seconds']:.0f} s",
        "",
    ]

    def rate(key: str) -> float | None:
        return results[key]["rate"] if key in results else None

    rows = [("enqueue() one job per transaction, {:,} jobs".format(options["enqueue_jobs"]),
             "enqueue/doctorjob", "enqueue/raw"),
            ("  the same with NOTIFY off", "enqueue/doctorjob-no-notify", "enqueue/raw"),
            ("enqueue_many() {:,} jobs in one call".format(options["bulk_jobs"]), "bulk/doctorjob", "bulk/raw")]
    rows += [(f"drain {options['jobs']:,} no-op jobs, {p} process{'es' if p > 1 else ''}",
              f"drain/doctorjob/{p}", f"drain/raw/{p}") for p in options["processes"]]
    latency_title = f"latency enqueue→start, {options['probes']} probes 20 ms apart (ms)"
    width = max(len(latency_title), *(len(label) for label, *_ in rows)) + 2
    lines.append(f"{'throughput (jobs/s)':<{width}}{'doctorjob':>11}{'raw SQL':>11}{'ratio':>8}"
                 f"{'others CPU':>12}")
    for label, ours, raw in rows:
        a, b = rate(ours), rate(raw)
        noise = max(others.get(ours, 0), others.get(raw, 0))
        capped = " (capped)" if results.get(ours, {}).get("capped") else ""
        lines.append(f"{label:<{width}}{_num(a):>11}{_num(b):>11}"
                     f"{(f'{a / b:.2f}x' if a and b else '-'):>8}{noise:>11.0%}{capped}")
    lines.append("")

    poll = env["poll_interval"]
    lines.append(f"{latency_title:<{width}}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}{'others CPU':>12}")
    for key, label in (("latency/doctorjob/notify", "doctorjob, NOTIFY"),
                       ("latency/raw/notify", "raw SQL, LISTEN/NOTIFY"),
                       ("latency/doctorjob/poll", f"doctorjob, NOTIFY off (poll {poll:g} s)"),
                       ("latency/raw/poll", f"raw SQL, polling every {poll:g} s")):
        if key in results:
            r = results[key]
            lines.append(f"{label:<{width}}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                         f"{r['max_ms']:>9.1f}{others[key]:>12.0%}")
    if "memory" in results:
        m = results["memory"]
        growth = f"{m['growth_pct']:+.1f}%" if m["growth_pct"] is not None else "n/a"
        lines += ["", f"worker memory (VmRSS of one run_jobs process): idle {_mib(m['idle_kib'])}, after "
                  f"{m['small']:,} jobs {_mib(m['after_small_kib'])}, after {m['large']:,} jobs "
                  f"{_mib(m['after_large_kib'])} ({growth} from {m['small']:,} to {m['large']:,}; others CPU "
                  f"{others['memory']:.0%})"]
    noisy = [key for key, share in others.items() if share > 0.10]
    if noisy:
        lines += ["", f"note: other processes used more than 10% of the machine during {len(noisy)} measure(s) "
                  f"({', '.join(noisy)}): those numbers are noisy"]
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _loads(loads: Sequence[float]) -> str:
    return " / ".join(map(str, loads)) or "n/a"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


# -- entry point of the worker processes -----------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m doctorjob.benchmark worker|raw-worker``: one worker process of the bench."""
    parser = argparse.ArgumentParser(prog="python -m doctorjob.benchmark")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="doctorjob's run_jobs on the scratch database")
    worker.add_argument("--settings", required=True, help="the project's settings module")
    worker.add_argument("--source", required=True, help="alias whose settings reach the server")
    worker.add_argument("--dbname", required=True, help="the scratch database")
    worker.add_argument("--no-notify", dest="notify", action="store_false")
    worker.add_argument("--run-jobs-args", default="[]", help="JSON list of run_jobs arguments")
    raw = commands.add_parser("raw-worker", help="the raw psycopg loop ($%s)" % CONNINFO_ENV)
    raw.add_argument("--batch", type=int, default=RAW_BATCH)
    raw.add_argument("--idle", type=float, default=RAW_IDLE)
    raw.add_argument("--listen", action="store_true")
    args = parser.parse_args(argv)
    _exit_with_parent()
    if args.command == "raw-worker":
        raw_worker(batch=args.batch, idle=args.idle, listen=args.listen)
        return
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    import django

    django.setup()
    doctorjob_worker(source=args.source, dbname=args.dbname, notify=args.notify,
                     run_jobs_args=json.loads(args.run_jobs_args))


def _exit_with_parent() -> None:
    """SIGTERM ourselves if the bench dies without stopping us (kill -9), instead of polling forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


if __name__ == "__main__":
    # Through the importable module, so the handlers are registered as doctorjob.benchmark.*
    from doctorjob.benchmark import main as _main

    _main()
