"""check_workers against real worker processes, as a liveness probe sees them: healthy while a
worker serves the queue, one line and exit 1 once it is frozen (SIGSTOP) past its lease, and
when nothing serves a queue with runnable jobs."""

from __future__ import annotations

import signal
import subprocess

import pytest
from django.db import connection

from doctorjob import enqueue
from doctorjob.models import Job, Status, Worker

from .helpers import manage, wait_for


def check_workers(*args: str) -> subprocess.CompletedProcess[str]:
    return manage("check_workers", *args)


@pytest.mark.django_db(transaction=True)
def test_runnable_jobs_without_a_worker_exit_1_with_one_line_naming_the_queue():
    enqueue("tests.noop", queue="emails")

    done = check_workers()

    assert done.returncode == 1
    assert done.stderr.startswith("unserved queue: queue 'emails' has runnable jobs (the oldest due ")
    assert done.stderr.endswith("s ago) and no live worker takes it\n")
    assert done.stderr.count("\n") == 1


def test_a_serving_worker_is_healthy_and_a_frozen_one_is_reported_once_its_lease_passes(workers):
    if connection.vendor == "sqlite":
        pytest.skip("a worker frozen by SIGSTOP may hold SQLite's only write lock, and every write waits on it")
    worker = workers("--lease", "3", "--poll-interval", "0.1")
    job = enqueue("tests.noop")
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Status.SUCCEEDED, message="the job to succeed")
    # The claim is written with the next heartbeat (every third of the lease).
    wait_for(lambda: Worker.objects.filter(last_claimed_at__isnull=False).exists(), message="last_claimed_at")

    healthy = check_workers()
    assert (healthy.returncode, healthy.stderr) == (0, "")
    assert healthy.stdout.startswith("ok: ")

    worker.signal(signal.SIGSTOP)
    try:
        enqueue("tests.noop")
        frozen = wait_for(
            lambda: (done := check_workers()).returncode == 1 and done,
            timeout=20,
            interval=0.5,
            message="check_workers to report the frozen worker",
        )
    finally:
        worker.signal(signal.SIGCONT)
    assert "late heartbeat: worker " in frozen.stderr
    assert "more than its lease of 3s" in frozen.stderr
    assert worker.stop() == 0
