"""A SIGKILL storm: workers killed again and again while they drain, some with their watchdog
(the host goes down), and every committed job still runs to success, each atomic effect
exactly once. Prints the figures docs/reliability.md quotes (run with -s to see them)."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count, Sum

from doctorjob import enqueue_many
from doctorjob.models import DeadLetter, Job, Status
from tests.testapp.models import Effect

from .helpers import statuses, wait_for

JOBS = 3000  # half atomic (an Effect row in the job's transaction), half plain (a line in a file)
WORKERS = 3
STORM_SECONDS = 12.0
KILL_EVERY = 0.4
HOST_LOSS = 4  # one kill in HOST_LOSS also kills the watchdog: the lease sweep rescues those jobs
OPTIONS = ("--concurrency", "4", "--batch-size", "20", "--lease", "3", "--poll-interval", "0.1")


def enqueue_storm_jobs(runs: Path) -> tuple[list[Job], set[int]]:
    """JOBS jobs of 10-40 ms, half atomic; returns them and the atomic ones' ids."""
    jobs = enqueue_many(
        [
            {
                "job": "tests.acceptance.storm_atomic" if i % 2 else "tests.acceptance.storm_plain",
                "payload": {"runs": str(runs), "ms": 10 + i % 30},
            }
            for i in range(JOBS)
        ]
    )
    return jobs, {j.pk for j in jobs if j.name == "tests.acceptance.storm_atomic"}


def unfinished() -> bool:
    return Job.objects.exclude(status=Status.SUCCEEDED).exists()


def every_job_succeeded_once_atomically(jobs: list[Job], atomic: set[int], runs: Path) -> Counter[int]:
    """Wait for every job to succeed, check that each atomic effect exists once and each plain job
    ran, and return the plain jobs' runs (the file holds a line for each run that got that far)."""
    wait_for(lambda: not unfinished(), timeout=90, message=lambda: f"every job to succeed: {statuses()}")
    assert not DeadLetter.objects.exists()
    effects = Counter(Effect.objects.values_list("job_id", flat=True))
    assert set(effects) == atomic and set(effects.values()) == {1}, "an atomic effect missing or repeated"
    plain_runs = Counter(int(line) for line in runs.read_text().split())
    assert set(plain_runs) == {j.pk for j in jobs} - atomic
    return plain_runs


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the storm runs on PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_a_sigkill_storm_loses_no_job_and_repeats_no_atomic_effect(workers, tmp_path):
    runs = tmp_path / "runs"
    jobs, atomic = enqueue_storm_jobs(runs)
    alive = [workers(*OPTIONS) for _ in range(WORKERS)]
    rng = random.Random(4)
    kills = Counter()
    deadline = time.monotonic() + STORM_SECONDS
    while time.monotonic() < deadline and unfinished():
        time.sleep(KILL_EVERY)  # the storm's rhythm, not a synchronisation
        victim = alive.pop(rng.randrange(len(alive)))
        host = kills["total"] % HOST_LOSS == HOST_LOSS - 1
        victim.kill(watchdog=host)
        kills["total"] += 1
        kills["with watchdog" if host else "worker only"] += 1
        alive.append(workers(*OPTIONS, wait=False))

    plain_runs = every_job_succeeded_once_atomically(jobs, atomic, runs)
    attempts = Job.objects.aggregate(total=Sum("attempts"))["total"]
    charged = Job.objects.filter(attempts__gt=1).aggregate(n=Count("id"))["n"]
    print(
        f"\nstorm: jobs={JOBS} workers={WORKERS} seconds={STORM_SECONDS:g} kills={kills['total']} "
        f"(worker only {kills['worker only']}, with its watchdog {kills['with watchdog']}) lost=0 "
        f"duplicated_atomic_effects=0 plain_jobs_run_twice={sum(1 for n in plain_runs.values() if n > 1)} "
        f"extra_plain_runs={sum(plain_runs.values()) - len(plain_runs)} attempts={attempts} "
        f"jobs_charged_a_lost_attempt={charged}"
    )
    for worker in alive:
        worker.kill(watchdog=True)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (pg_terminate_backend)")
@pytest.mark.django_db(transaction=True)
def test_connections_terminated_again_and_again_lose_no_job_and_repeat_no_atomic_effect(workers, tmp_path):
    """The database drops every worker connection twice a second while they drain (a failover,
    a restarting pooler, an administrator's pg_terminate_backend): the workers log it,
    reconnect and finish every job."""
    runs = tmp_path / "runs"
    jobs, atomic = enqueue_storm_jobs(runs)
    alive = [workers(*OPTIONS) for _ in range(WORKERS)]
    rounds = terminated = 0
    deadline = time.monotonic() + STORM_SECONDS
    while time.monotonic() < deadline and unfinished():
        time.sleep(0.5)  # the outages' rhythm, not a synchronisation
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            terminated += len(cursor.fetchall())
        rounds += 1

    plain_runs = every_job_succeeded_once_atomically(jobs, atomic, runs)
    assert all(worker.alive() for worker in alive)
    attempts = Job.objects.aggregate(total=Sum("attempts"))["total"]
    print(
        f"\nconnections terminated: jobs={JOBS} workers={WORKERS} rounds={rounds} connections={terminated} "
        f"lost=0 duplicated_atomic_effects=0 plain_jobs_run_twice={sum(1 for n in plain_runs.values() if n > 1)} "
        f"attempts={attempts} (failed attempts {attempts - JOBS})"
    )
    assert [worker.stop() for worker in alive] == [0] * WORKERS
