"""``python -m bench.soak``: churn for minutes and watch the job table's size.

Jobs are enqueued at a steady rate while workers drain them and retention prunes them
(``KEEP_SUCCEEDED`` of a minute here, so that pruning happens within the run): once the first
prune has run, the tables and their indexes must stay about the same size, which says that
pruning and autovacuum keep up and nothing accumulates. Runs on a scratch database it creates
and drops, as the bench does. Not part of CI: it takes ten minutes by default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import django

TABLES = ("doctorjob_job", "doctorjob_jobexecution")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to churn (default 10)")
    parser.add_argument("--rate", type=int, default=300, help="jobs enqueued per second (default 300)")
    parser.add_argument("--keep", type=float, default=60.0, help="KEEP_SUCCEEDED, seconds (default 60)")
    parser.add_argument("--processes", type=int, default=2, help="run_jobs processes (default 2)")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument(
        "--settings", help="settings module (default: $DJANGO_SETTINGS_MODULE or the example project's)"
    )
    args = parser.parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings or os.environ.get(
        "DJANGO_SETTINGS_MODULE", "example_project.settings"
    )
    django.setup()
    from django.conf import settings as django_settings
    from django.db import connections, router
    from django.test.utils import override_settings

    from doctorjob import enqueue_many
    from doctorjob.models import Job

    from .options import NOOP
    from .runner import CHECKOUT
    from .scratch import ScratchDatabase
    from .workers import register_jobs

    register_jobs()
    db = ScratchDatabase(router.db_for_write(Job))
    db.create()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([p for p in sys.path if p] + [CHECKOUT]))
    command = [
        sys.executable,
        "-m",
        "bench",
        "worker",
        "--settings",
        django_settings.SETTINGS_MODULE,
        "--source",
        db.source,
        "--dbname",
        db.name,
        "--keep-succeeded",
        str(args.keep),
        "--run-jobs-args",
        json.dumps(["--batch-size", "100"]),
    ]
    workers = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(args.processes)]
    print(
        f"soak: {args.minutes:g} min, {args.rate} jobs/s, KEEP_SUCCEEDED {args.keep:g} s, "
        f"{args.processes} x run_jobs, scratch database {db.name}"
    )
    print(f"{'minute':>6} {'enqueued':>9} {'jobs':>7} {'queued':>7} {'job table':>10} {'history':>10}")
    samples = []
    try:
        with override_settings(
            DEBUG=False, DOCTORJOB={**getattr(django_settings, "DOCTORJOB", {}), "REQUIRE_TRANSACTION": False}
        ):
            started = time.monotonic()
            enqueued, next_sample = 0, started
            while (now := time.monotonic()) < started + args.minutes * 60:
                due = int((now - started) * args.rate) - enqueued
                if due > 0:
                    enqueue_many([(NOOP, {})] * due, using=db.alias)
                    enqueued += due
                if now >= next_sample:
                    samples.append(_sample(connections[db.alias], (now - started) / 60, enqueued))
                    next_sample += args.sample
                for worker in workers:
                    if worker.poll() is not None:
                        raise SystemExit(f"a worker exited with {worker.returncode}")
                time.sleep(0.05)
            samples.append(_sample(connections[db.alias], (time.monotonic() - started) / 60, enqueued))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        db.drop()
    steady = [s for s in samples if s[0] >= 2 * args.keep / 60 + 1]  # after the first prunes
    if steady:
        sizes = [s[3] + s[4] for s in steady]
        print(
            f"after minute {steady[0][0]:.1f}: job table + history between {min(sizes) / 2**20:.1f} and "
            f"{max(sizes) / 2**20:.1f} MiB ({len(steady)} samples)"
        )
    return 0


def _sample(connection, minute: float, enqueued: int) -> tuple[float, int, int, int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(*) FILTER (WHERE status = 'queued') FROM doctorjob_job")
        jobs, queued = cursor.fetchone()
        cursor.execute("SELECT pg_total_relation_size(%s), pg_total_relation_size(%s)", list(TABLES))
        job_size, history_size = cursor.fetchone()
    print(
        f"{minute:6.1f} {enqueued:9,} {jobs:7,} {queued:7,} {job_size / 2**20:8.1f} MiB "
        f"{history_size / 2**20:6.1f} MiB",
        flush=True,
    )
    return minute, enqueued, jobs, job_size, history_size


if __name__ == "__main__":
    sys.exit(main())
