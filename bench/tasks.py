"""``python -m bench.tasks``: Django tasks through doctorjob against doctorjob's own jobs.

Per repetition and system, interleaved: ``Task.enqueue()`` (or ``doctorjob.enqueue()``) of one
no-op task (job) per transaction, timed; then a backlog enqueued in one transaction and drained
by ``run_jobs`` processes, timed from the first completed job to an empty queue. PostgreSQL
only, on a scratch database the bench creates and drops. Needs Django 6 and settings whose
TASKS' default backend is doctorjob.backends.DoctorJobBackend (``tests.settings`` has it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import django

BLOCK = 100  # enqueues of one system before the other's turn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--enqueue-jobs", type=int, default=3_000, help="enqueued one per transaction (3000)")
    parser.add_argument("--jobs", type=int, default=20_000, help="drained (20000)")
    parser.add_argument("--processes", type=int, default=2, help="run_jobs processes for the drain (2)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (3)")
    parser.add_argument("--run-jobs-args", default='["--batch-size", "500"]', help="JSON list for run_jobs")
    parser.add_argument("--settings", default=os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"))
    args = parser.parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    django.setup()
    if django.VERSION < (6, 0):
        print("python -m bench.tasks needs Django 6 (django.tasks)", file=sys.stderr)
        return 2
    from django.db import connections, router
    from django.tasks import task_backends

    from doctorjob.backends import DoctorJobBackend
    from doctorjob.models import Job

    from .runner import CHECKOUT
    from .scratch import ScratchDatabase
    from .workers import register_jobs

    if not isinstance(task_backends["default"], DoctorJobBackend):
        print(f"TASKS['default'] of {args.settings} is not doctorjob's DoctorJobBackend", file=sys.stderr)
        return 2
    register_jobs()
    source = router.db_for_write(Job)
    if connections[source].vendor != "postgresql":
        print("python -m bench.tasks runs on PostgreSQL: set DATABASE_URL=postgres://...", file=sys.stderr)
        return 2
    db = ScratchDatabase(source)
    db.create()
    # Task.enqueue() writes where the router says, the default alias: point it at the scratch database.
    connections[source].close()
    source_name = connections[source].settings_dict["NAME"]
    connections[source].settings_dict["NAME"] = db.name
    try:
        bench = Bench(args, db, CHECKOUT)
        results: dict[str, list[dict[str, float]]] = {"tasks": [], "doctorjob": []}
        for rep in range(args.reps):
            order = ("tasks", "doctorjob") if rep % 2 == 0 else ("doctorjob", "tasks")
            enqueue_rates = bench.enqueue(order)
            for system in order:
                results[system].append({"enqueue": enqueue_rates[system], "drain": bench.drain(system)})
                print(f"rep {rep + 1} {system}: {_brief(results[system][-1])}", flush=True)
        print(report(args, results))
    finally:
        connections[source].close()
        connections[source].settings_dict["NAME"] = source_name
        db.drop()
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace, db: Any, checkout: str) -> None:
        import psycopg

        self.args, self.db, self.checkout = args, db, checkout
        self.monitor = psycopg.connect(**db.params, autocommit=True)
        self.workdir = tempfile.mkdtemp(prefix="doctorjob-bench-tasks-")

    def _sender(self, system: str) -> Callable[[int], Any]:
        from doctorjob import enqueue

        from .django_tasks import noop
        from .options import NOOP

        return noop.enqueue if system == "tasks" else (lambda n: enqueue(NOOP, {"n": n}))

    def enqueue(self, order: tuple[str, ...]) -> dict[str, float]:
        """One job per transaction, the systems taking turns every BLOCK jobs, so that the load
        of a shared machine weighs on both alike."""
        from django.db import transaction

        self._reset()
        spent = dict.fromkeys(order, 0.0)
        senders = {system: self._sender(system) for system in order}
        blocks = max(1, self.args.enqueue_jobs // BLOCK)
        for block in range(blocks):
            for system in order if block % 2 == 0 else order[::-1]:
                send = senders[system]
                started = time.perf_counter()
                for i in range(BLOCK):
                    with transaction.atomic():
                        send(i)
                spent[system] += time.perf_counter() - started
        return {system: blocks * BLOCK / seconds for system, seconds in spent.items()}

    def drain(self, system: str) -> float:
        from django.db import transaction

        self._reset()
        send = self._sender(system)
        with transaction.atomic():
            for i in range(self.args.jobs):
                send(i)
        self.monitor.execute("VACUUM ANALYZE doctorjob_job")
        return self._drain()

    def _reset(self) -> None:
        self.monitor.execute("TRUNCATE doctorjob_job, doctorjob_jobexecution, doctorjob_deadletter CASCADE")

    def _remaining(self) -> int:
        row = self.monitor.execute("SELECT count(*) FROM doctorjob_job WHERE status IN ('queued', 'running')")
        return int(row.fetchone()[0])

    def _drain(self) -> float:
        from django.conf import settings

        paths = [p for p in sys.path if p]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([*paths, self.checkout]))
        command = [sys.executable, "-m", "bench", "worker", "--settings", settings.SETTINGS_MODULE]
        command += ["--source", self.db.source, "--dbname", self.db.name, "--run-jobs-args", self.args.run_jobs_args]
        procs = []
        for index in range(self.args.processes):
            with open(os.path.join(self.workdir, f"worker-{len(procs)}-{index}.log"), "wb") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        n, first = self.args.jobs, None
        deadline = time.monotonic() + 600
        try:
            while True:
                left, now = self._remaining(), time.perf_counter()
                if first is None and left < n:
                    first = (now, left)
                if left == 0:
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"the drain stopped with {left} jobs left; logs in {self.workdir}")
                time.sleep(0.02)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
        failed = self.monitor.execute("SELECT count(*) FROM doctorjob_job WHERE status <> 'succeeded'").fetchone()[0]
        if failed:
            raise RuntimeError(f"{failed} jobs did not succeed; logs in {self.workdir}")
        assert first is not None
        return (first[1] - left) / (now - first[0])


def _brief(result: dict[str, float]) -> str:
    return f"enqueue {result['enqueue']:,.0f}/s, drain {result['drain']:,.0f}/s"


def report(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> str:
    def cell(system: str, key: str) -> str:
        values = [r[key] for r in results[system]]
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"

    def ratio(key: str) -> str:
        tasks = statistics.median(r[key] for r in results["tasks"])
        jobs = statistics.median(r[key] for r in results["doctorjob"])
        return f"{tasks / jobs:.2f} ×"

    return "\n".join(
        [
            "",
            f"medians of {args.reps} (min–max); drain: {args.processes} x run_jobs "
            + " ".join(json.loads(args.run_jobs_args)),
            "| measure | Task.enqueue() (DoctorJobBackend) | doctorjob enqueue() | tasks / jobs |",
            "|---|---|---|---|",
            f"| enqueue, one per transaction, per s ({args.enqueue_jobs:,}) | {cell('tasks', 'enqueue')} | "
            f"{cell('doctorjob', 'enqueue')} | {ratio('enqueue')} |",
            f"| drain {args.jobs:,} no-ops, per s (net) | {cell('tasks', 'drain')} | {cell('doctorjob', 'drain')} | "
            f"{ratio('drain')} |",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
