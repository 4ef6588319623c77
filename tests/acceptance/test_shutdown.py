"""SIGTERM: stop claiming, let running jobs finish within --shutdown-timeout, put the rest
back in the queue without counting an attempt, exit 0."""

from __future__ import annotations

import signal
import time

import pytest
from django.db import transaction

from doctorjob import enqueue, enqueue_many
from doctorjob.models import Status
from tests.testapp.models import Run

from .helpers import run_jobs, status_of, wait_for


@pytest.mark.django_db(transaction=True)
def test_sigterm_lets_the_running_job_finish_and_requeues_the_claimed_ones(workers, tmp_path):
    started, release, touched = tmp_path / "started", tmp_path / "release", tmp_path / "touched"
    with transaction.atomic():
        running, waiting = enqueue_many(
            [
                ("tests.block", {"started": str(started), "release": str(release)}),
                ("tests.acceptance.touch", {"path": str(touched)}),
            ]
        )
    # One handler thread and a batch of two: the second job is claimed but waits for the thread.
    worker = workers("--concurrency", "1", "--batch-size", "2", "--poll-interval", "0.1")
    wait_for(started.exists, message="the first job to start")
    assert status_of(waiting) == Status.RUNNING

    worker.signal(signal.SIGTERM)
    # The worker gives back what it has not started: proof that it is shutting down.
    wait_for(
        lambda: status_of(waiting) == Status.QUEUED,
        message=lambda: f"the claimed job to be returned:\n{worker.output()}",
    )
    assert worker.alive() and status_of(running) == Status.RUNNING
    release.touch()

    assert worker.wait() == 0
    running.refresh_from_db()
    assert (running.status, running.attempts) == (Status.SUCCEEDED, 1)
    assert Run.objects.filter(job_id=running.pk * 100 + 1).exists()
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts, waiting.worker) == (Status.QUEUED, 0, "")
    assert not touched.exists()


@pytest.mark.django_db(transaction=True)
def test_sigterm_returns_a_job_still_running_at_the_shutdown_timeout_to_the_queue(workers, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    job = enqueue("tests.block", {"started": str(started), "release": str(release), "timeout": 30})
    worker = workers("--shutdown-timeout", "1", "--poll-interval", "0.1")
    wait_for(started.exists, message="the job to start")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 5

    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker, job.lease_id) == (Status.QUEUED, 0, "", None)
    assert "shutdown timeout" in worker.output()
    assert not Run.objects.exists()

    # Back in the queue for real: the next worker runs it as its first attempt.
    release.touch()
    done = run_jobs("--burst", timeout=30)
    assert done.returncode == 0, done.stderr
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.SUCCEEDED, 1)
    assert list(Run.objects.values_list("job_id", flat=True)) == [job.pk * 100 + 1]
