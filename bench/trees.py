"""``python -m bench.trees``: drain 1,000 children of one parent against 1,000 independent jobs.

Every child that finishes settles its parent under the parent's row lock (doctorjob/trees.py):
this measures what that costs when several workers finish children of one parent at the same
moment, the case that serialises naive designs. Both shapes run in the same session, on the same
workers, alternately; PostgreSQL only (a scratch database it creates and drops, as the bench does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import django


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trees", description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=1000, help="children of the one parent (default 1000)")
    parser.add_argument("--processes", type=int, default=2, help="run_jobs processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="handler threads per process (default 4)")
    parser.add_argument("--batch-size", type=int, default=100, help="run_jobs --batch-size (default 100)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each shape (default 5)")
    parser.add_argument("--settings", help="settings module (default: $DJANGO_SETTINGS_MODULE or the example's)")
    args = parser.parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings or os.environ.get(
        "DJANGO_SETTINGS_MODULE", "example_project.settings"
    )
    django.setup()
    from django.conf import settings as django_settings
    from django.db import connections, router, transaction
    from django.test.utils import override_settings

    from doctorjob import Child, enqueue, enqueue_many
    from doctorjob.models import Job

    from .options import NOOP
    from .runner import CHECKOUT
    from .scratch import ScratchDatabase
    from .workers import register_jobs

    register_jobs()
    db = ScratchDatabase(router.db_for_write(Job))
    if connections[db.source].vendor != "postgresql":
        raise SystemExit("bench.trees runs on PostgreSQL: set DATABASE_URL=postgres://...")
    db.create()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([p for p in sys.path if p] + [CHECKOUT]))
    run_jobs_args = ["--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency)]
    command = [
        sys.executable,
        *("-m", "bench", "worker", "--settings", django_settings.SETTINGS_MODULE),
        *("--source", db.source, "--dbname", db.name, "--run-jobs-args", json.dumps(run_jobs_args)),
    ]
    workers = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(args.processes)]
    connection = connections[db.alias]

    def drain(shape: str) -> float:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE doctorjob_job, doctorjob_jobexecution, doctorjob_deadletter")
        with transaction.atomic(using=db.alias):
            if shape == "tree":
                enqueue(NOOP, children=[Child(NOOP)] * args.children, using=db.alias)
            else:
                enqueue_many([(NOOP, {})] * (args.children + 1), using=db.alias)
        started = time.monotonic()
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT count(*) FROM doctorjob_job WHERE status <> 'succeeded'")
                if cursor.fetchone()[0] == 0:
                    return time.monotonic() - started
                if any(w.poll() is not None for w in workers):
                    raise SystemExit("a worker exited")
                if time.monotonic() - started > 120:
                    raise SystemExit(f"{shape}: not drained within 120 s")
                time.sleep(0.002)

    times: dict[str, list[float]] = {"independent": [], "tree": []}
    try:
        with override_settings(DEBUG=False):
            drain("independent")  # warm up: connections, prepared statements, caches
            for _ in range(args.reps):
                for shape in times:
                    times[shape].append(drain(shape))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        db.drop()
    jobs = args.children + 1
    print(
        f"bench.trees: {args.children:,} children of one parent vs {jobs:,} independent jobs, "
        f"{args.processes} x run_jobs --concurrency {args.concurrency} --batch-size {args.batch_size}, "
        f"PostgreSQL, median of {args.reps}"
    )
    medians = {shape: statistics.median(t) for shape, t in times.items()}
    for shape, median in medians.items():
        print(
            f"  {shape:<12} {median * 1000:8.0f} ms  {jobs / median:8,.0f} jobs/s  (runs: "
            + ", ".join(f"{t * 1000:.0f}" for t in times[shape])
            + " ms)"
        )
    print(f"  tree / independent: {medians['tree'] / medians['independent']:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
