"""Taking the measures: enqueue, bulk enqueue, drains, latency and memory, for doctorjob and the
raw baseline, each repeated and reduced to medians."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from .machine import _cpu_by_process, _cpus, _loadavg, _others_cpu, _rss_kib, environment
from .options import (
    CONNINFO_ENV,
    DRAIN_CAP,
    NOOP,
    POLL_EVERY,
    PROBE,
    PROBE_FILE_ENV,
    PROBE_SPACING,
    RAW_BATCH,
    RAW_IDLE,
    BenchmarkError,
    Options,
)
from .relay import QUEUE as RELAY_QUEUE
from .relay import Target
from .relay import targets as relay_targets
from .report import _mib
from .scratch import ScratchDatabase
from .workers import RAW_DDL, RAW_INSERT, RAW_INSERT_MANY, RAW_INSERT_NOTIFY, RAW_TABLE, register_jobs

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding bench/


# -- measuring -----------------------------------------------------------------------------------


def run(options: Options, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Create the scratch database, take every measure ``options.reps`` times, drop it; return
    the report (environment, options, every repetition and the medians)."""
    from django.conf import settings as django_settings
    from django.db import connections, router
    from django.test.utils import override_settings

    from doctorjob.conf import settings
    from doctorjob.models import Job

    source = options.database or router.db_for_write(Job)
    if source not in connections:
        raise BenchmarkError(f"unknown database alias '{source}'")
    if connections[source].vendor != "postgresql":
        raise BenchmarkError(
            f"the bench runs on PostgreSQL only; database alias '{source}' is {connections[source].vendor}"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise BenchmarkError("the bench needs psycopg 3 (pip install 'psycopg[binary]')") from None
    settings_module = django_settings.SETTINGS_MODULE  # override_settings() below hides it
    if not settings_module:
        raise BenchmarkError(
            "the bench starts worker processes, which need a settings module "
            "(--settings or DJANGO_SETTINGS_MODULE), not settings.configure()"
        )
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
        with (
            override_settings(DEBUG=False, DOCTORJOB=bench_settings),
            tempfile.TemporaryDirectory(prefix="doctorjob-bench-") as workdir,
        ):
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
    def __init__(
        self,
        options: Options,
        db: ScratchDatabase,
        workdir: str,
        settings_module: str,
        default_poll: float,
        progress: Callable[[str], None],
    ) -> None:
        import psycopg
        from django.db import connections

        from doctorjob.models import Job

        self.options, self.db, self.workdir, self.progress = options, db, workdir, progress
        self.settings_module = settings_module
        self.poll = options.poll_interval if options.poll_interval is not None else default_poll
        self.monitor = psycopg.connect(**db.params, autocommit=True)  # counts, truncates, checkpoints
        self.monitor.execute(RAW_DDL)
        self.job_table = connections[db.alias].ops.quote_name(Job._meta.db_table)
        self.notes: list[str] = []
        self.logs: dict[int, str] = {}
        self._spawned = 0
        self.relay_targets, relay_notes = relay_targets(options.relay_redis, options.relay_amqp)
        self.notes += relay_notes

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
                if self.options.only and not key.startswith(self.options.only):
                    continue
                self.progress(f"[{rep}/{self.options.reps}] {key}")
                measure(key, take)
        if (
            not self.options.skip_memory and not self.options.only
        ):  # once: a 100k-job drain per repetition would add little
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
        for target in self.relay_targets:
            yield target.key, lambda t=target: self.relay(t)

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
            from doctorjob import enqueue

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

            from doctorjob import enqueue_many

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
        return {
            **self._clock(self._start(system, processes, listen=False, idle=RAW_IDLE), n, system),
            "processes": processes,
        }

    def _clock(self, procs: Sequence[subprocess.Popen], n: int, system: str = "doctorjob") -> dict[str, Any]:
        """Wait for ``procs`` to empty the queue of ``n`` jobs, then stop them; the figures."""
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
        result = {"jobs": n, "gross_seconds": now - spawned, "capped": capped}
        if first is not None and now > first[0]:
            result.update(
                seconds=now - first[0], rate=(first[1] - left) / (now - first[0]), startup_seconds=first[0] - spawned
            )
        else:  # drained between two polls: only the gross figure (start-up included) is known
            result.update(rate=(n - left) / (now - spawned), gross_only=True)
        return result

    def relay(self, target: Target) -> dict[str, Any]:
        """One ``run_jobs --relay`` process publishing ``relay_jobs`` jobs to ``target``'s broker;
        clocked as the drain is, from the first job relayed to none left. The broker's queue must
        then hold every job."""
        from doctorjob import enqueue_many

        n = self.options.relay_jobs
        self._reset()
        target.declare()
        try:
            enqueue_many(
                ({"job": NOOP, "payload": {"n": i}, "queue": RELAY_QUEUE} for i in range(n)), using=self.db.alias
            )
            self._settle(vacuum=True)
            result = self._clock(
                self._start("doctorjob", 1, run_jobs_args=("--relay", *self._relay_args()), env=target.env()), n
            )
            arrived = target.count()
            if arrived < n:
                raise BenchmarkError(f"{target.label}: {arrived:,} of {n:,} relayed jobs reached the broker's queue")
        finally:
            target.delete()
        return {**result, "broker": target.label, "messages": arrived}

    def _relay_args(self) -> list[str]:
        """run_jobs options that apply to a relay (--batch-size, --poll-interval)."""
        args, given = [], list(self.options.run_jobs_args)
        for name in ("--batch-size", "--poll-interval"):
            if name in given:
                args += [name, given[given.index(name) + 1]]
        return args

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
        return {
            "probes": n,
            "p50_ms": _percentile(ms, 50),
            "p95_ms": _percentile(ms, 95),
            "p99_ms": _percentile(ms, 99),
            "max_ms": ms[-1],
            "poll_interval": None if notify else self.poll,
        }

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
        return {
            "small": small,
            "large": large,
            "idle_kib": idle,
            "after_small_kib": after_small,
            "after_large_kib": after_large,
            "growth_pct": growth,
        }

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
            from doctorjob import enqueue_many

            enqueue_many([(NOOP, {"n": i}) for i in range(n)], using=self.db.alias)

    def _remaining(self, system: str) -> int:
        """Queued plus running jobs: a job leaves the count only once its completion is recorded."""
        table = RAW_TABLE if system == "raw" else self.job_table
        return self.monitor.execute(f"SELECT count(*) FROM {table} WHERE status IN ('queued', 'running')").fetchone()[0]

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
            from doctorjob import enqueue

            def send() -> None:
                enqueue(PROBE, {"t": time.time()}, using=self.db.alias)

            yield send

    def _start(
        self,
        system: str,
        count: int,
        *,
        notify: bool = True,
        listen: bool = False,
        idle: float = RAW_IDLE,
        probe_file: str | None = None,
        run_jobs_args: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> list[subprocess.Popen]:
        """Start ``count`` worker processes of ``system``; their output goes to log files."""
        from psycopg.conninfo import make_conninfo

        # What this process imports, and the checkout's root, where ``python -m bench`` finds bench/.
        paths = [p for p in sys.path if p]
        paths += [] if CHECKOUT in paths else [CHECKOUT]
        env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(paths))
        if probe_file:
            env[PROBE_FILE_ENV] = probe_file
        command = [sys.executable, "-m", "bench"]
        if system == "raw":
            env[CONNINFO_ENV] = make_conninfo(**self.db.params)
            command += ["raw-worker", "--batch", str(RAW_BATCH), "--idle", str(idle)]
            command += ["--listen"] if listen else []
        else:
            command += [
                "worker",
                "--settings",
                self.settings_module,
                "--source",
                self.db.source,
                "--dbname",
                self.db.name,
                "--run-jobs-args",
                json.dumps(list(self.options.run_jobs_args if run_jobs_args is None else run_jobs_args)),
            ]
            command += [] if notify else ["--no-notify"]
        procs = []
        for _ in range(count):
            self._spawned += 1
            log = os.path.join(self.workdir, f"{system}-{self._spawned}.log")
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
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
                raise BenchmarkError(
                    f"a worker process exited early (code {proc.returncode}); its output ends with:\n{tail}"
                )

    def _wait(self, done: Callable[[], bool], procs: Sequence[subprocess.Popen], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self._check_alive(procs)
            if time.monotonic() > deadline:
                raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_EVERY)

    def _wait_empty(self, system: str, procs: Sequence[subprocess.Popen]) -> None:
        self._wait(lambda: self._remaining(system) == 0, procs, DRAIN_CAP, "the queue to empty")
        time.sleep(0.2)  # let the worker finish its round before its memory is read


# -- statistics ----------------------------------------------------------------------------------


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values, as the peer harness computes it."""
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def _median_of(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the repetitions; other fields from the first one."""
    merged = dict(results[0])
    for key in merged:
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
