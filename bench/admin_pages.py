"""``python -m bench.admin_pages``: the admin's pages on a million jobs, timed.

Fills a PostgreSQL database (``DATABASE_URL``, migrated first) with 1,000,000 jobs spread over
the 7 days of default retention, one execution per finished job, a dead letter per dead job,
20 definitions over 4 queues and 3 workers, with ``generate_series`` (about a minute), then
times the dashboard, the job list (plain and filtered), the dead-letter list and a search
through Django's test client logged in as a superuser: the median of several runs after one
warm-up. ``--drop`` empties the tables afterwards. Not part of CI.

    DATABASE_URL=postgres://root@127.0.0.1:5432/dj_dash DJANGO_SETTINGS_MODULE=tests.settings \\
        python -m bench.admin_pages --jobs 1000000 --runs 7 --drop
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import django

NAMES = 20
QUEUES = ("default", "emails", "reports", "webhooks")

FILL = """
INSERT INTO doctorjob_job (name, queue, payload, status, priority, run_at, attempts, max_attempts, key,
    created_at, started_at, finished_at, worker, lease_id, lease_expires_at, result, error, traceback,
    version, concurrency_key)
SELECT 'app.task_' || lpad((mod(i, %(names)s))::text, 2, '0'),
    (%(queues)s::text[])[mod(mod(i, %(names)s), 4) + 1],
    jsonb_build_object('client_id', i, 'note', 'bench'),
    s.status, 0,
    CASE WHEN s.status = 'queued' AND mod(i, 3) = 0 THEN now() + interval '1 hour' ELSE t END,
    CASE WHEN s.status = 'dead' THEN 5 WHEN s.status IN ('queued', 'cancelled') THEN 0 ELSE 1 END,
    5, NULL, t,
    CASE WHEN s.status IN ('queued', 'cancelled') THEN NULL ELSE t END,
    CASE WHEN s.status IN ('queued', 'running') THEN NULL ELSE t + interval '40 milliseconds' END,
    CASE WHEN s.status IN ('queued', 'cancelled') THEN '' ELSE 'bench-host:' || (mod(i, 2) + 100) END,
    CASE WHEN s.status = 'running' THEN gen_random_uuid() END,
    CASE WHEN s.status = 'running' THEN now() + interval '30 seconds' END,
    CASE WHEN s.status = 'succeeded' THEN '{"ok": true}'::jsonb END,
    CASE WHEN s.status = 'dead' THEN 'ConnectionError: smtp-' || (mod(i, 7)) || '.example.com unreachable' ELSE '' END,
    CASE WHEN s.status = 'dead' THEN E'Traceback (most recent call last):\\n  File "app/tasks.py", line 12,'
        || E' in send\\n    smtp.connect()\\nConnectionError: smtp-' || mod(i, 7) || '.example.com unreachable'
        ELSE '' END,
    1, NULL
FROM generate_series(1, %(jobs)s) AS i,
    LATERAL (SELECT now() - interval '7 days' * (1 - i::float / %(jobs)s) AS t) AS at,
    LATERAL (SELECT CASE
        WHEN i > %(jobs)s - 20 THEN 'running'
        WHEN i > %(jobs)s - 15000 THEN 'queued'
        WHEN mod(i, 50) = 0 THEN 'dead'
        WHEN mod(i, 97) = 0 THEN 'cancelled'
        WHEN mod(i, 211) = 0 THEN 'skipped'
        ELSE 'succeeded' END AS status) AS s
"""

HISTORY = """
INSERT INTO doctorjob_jobexecution (job_id, attempt, worker, started_at, finished_at, duration, outcome, error)
SELECT id, attempts, worker, started_at, finished_at, finished_at - started_at,
    CASE status WHEN 'succeeded' THEN 'succeeded' WHEN 'dead' THEN 'failed' ELSE 'skipped' END, error
FROM doctorjob_job WHERE status IN ('succeeded', 'dead', 'skipped') ORDER BY finished_at
"""

DEAD_LETTERS = """
INSERT INTO doctorjob_deadletter (job_id, name, queue, payload, priority, attempts, max_attempts, key, error,
    traceback, created_at)
SELECT id, name, queue, payload, priority, attempts, max_attempts, key, error, traceback, finished_at
FROM doctorjob_job WHERE status = 'dead' ORDER BY id
"""

TABLES = ("doctorjob_job", "doctorjob_jobexecution", "doctorjob_deadletter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admin_pages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per page (median reported)")
    parser.add_argument("--keep", action="store_true", help="reuse the rows already there, if any")
    parser.add_argument("--drop", action="store_true", help="empty doctorjob's tables afterwards")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    if connection.vendor != "postgresql":
        print("bench.admin_pages needs DATABASE_URL=postgres://...", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM (SELECT 1 FROM doctorjob_job LIMIT 1) s")
        empty = not cursor.fetchone()[0]
        if not (args.keep and not empty):
            started = time.perf_counter()
            fill(cursor, args.jobs)
            print(f"filled {args.jobs:,} jobs with their history in {time.perf_counter() - started:.1f}s")
    from doctorjob.models import DeadLetter, Job, JobDefinition

    never, _ = JobDefinition.objects.get_or_create(name="app.never_run", defaults={"queue": "default"})
    dead_job = Job.objects.filter(status="dead").order_by("-id").values_list("pk", flat=True).first()
    letter = DeadLetter.objects.order_by("-id").values_list("pk", flat=True).first()
    definition = JobDefinition.objects.get(name="app.task_07")
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    pages = {
        "dashboard": reverse("admin:doctorjob_dashboard"),
        "job list": reverse("admin:doctorjob_job_changelist"),
        "job list ?status=dead": reverse("admin:doctorjob_job_changelist") + "?status__exact=dead",
        "job list ?status=queued&queue=emails": reverse("admin:doctorjob_job_changelist")
        + "?status__exact=queued&queue=emails",
        "job list ?name=app.task_07": reverse("admin:doctorjob_job_changelist") + "?name=app.task_07",
        "job list, page 50": reverse("admin:doctorjob_job_changelist") + "?p=50",
        "job search 'smtp-3'": reverse("admin:doctorjob_job_changelist") + "?q=smtp-3",
        "job search 'app.task_05'": reverse("admin:doctorjob_job_changelist") + "?q=app.task_05",
        "dead-letter list": reverse("admin:doctorjob_deadletter_changelist"),
        "dead-letter search 'smtp-3'": reverse("admin:doctorjob_deadletter_changelist") + "?q=smtp-3",
        "worker list": reverse("admin:doctorjob_worker_changelist"),
        "job list ?name= a job with no jobs": reverse("admin:doctorjob_job_changelist") + "?name=app.never_run",
        "job page (dead, with its attempt)": reverse("admin:doctorjob_job_change", args=[dead_job]),
        "dead-letter page": reverse("admin:doctorjob_deadletter_change", args=[letter]),
        "definition page": reverse("admin:doctorjob_jobdefinition_change", args=[definition.pk]),
        "definition page, no jobs": reverse("admin:doctorjob_jobdefinition_change", args=[never.pk]),
        "metrics": reverse("doctorjob_metrics"),
    }
    print(f"{'page':<40} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for label, url in pages.items():
        times = []
        for run in range(args.runs + 1):
            started = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                print(f"{label}: HTTP {response.status_code}", file=sys.stderr)
                return 1
            if run:  # the first run warms caches up
                times.append(elapsed)
        print(f"{label:<40} {statistics.median(times):>10.0f} {min(times):>8.0f} {max(times):>8.0f}")
    if args.drop:
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join(TABLES)}")
            cursor.execute("DELETE FROM doctorjob_worker")
            cursor.execute("DELETE FROM doctorjob_jobdefinition WHERE name LIKE 'app.%%'")
        print("emptied " + ", ".join(TABLES))
    return 0


def fill(cursor, jobs: int) -> None:
    """Write the jobs, their history and dead letters in SQL, then the statistics the planner reads."""
    from django.utils import timezone

    cursor.execute(f"TRUNCATE {', '.join(TABLES)}")
    cursor.execute(FILL, {"jobs": jobs, "names": NAMES, "queues": list(QUEUES)})
    cursor.execute(HISTORY)
    cursor.execute(DEAD_LETTERS)
    now = timezone.now()
    cursor.execute("DELETE FROM doctorjob_jobdefinition WHERE name LIKE 'app.task_%%'")
    for n in range(NAMES):
        cursor.execute(
            "INSERT INTO doctorjob_jobdefinition (name, queue, options, schedule, payload, paused, retired, version,"
            " min_version, created_at, updated_at) VALUES (%s, %s, '{}', '', '{}', %s, false, 1, 1, %s, %s)",
            [f"app.task_{n:02d}", QUEUES[n % 4], n == 3, now, now],
        )
    cursor.execute("DELETE FROM doctorjob_worker")
    for n, lost in ((100, False), (101, False), (102, True)):
        cursor.execute(
            "INSERT INTO doctorjob_worker (name, host, pid, queues, concurrency, lease, started_at, last_heartbeat,"
            " lost, last_claimed_at) VALUES (%s, 'bench-host', %s, '', 4, 30, now() - interval '1 day', now(), %s,"
            " now())",
            [f"bench-host:{n}", n, lost],
        )
    for table in TABLES:
        cursor.execute(f"VACUUM ANALYZE {table}")


if __name__ == "__main__":
    sys.exit(main())
