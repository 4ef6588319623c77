"""Real workers drain the table: every job runs exactly once, whatever the database."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from doctorjob import enqueue, enqueue_many
from doctorjob.models import DeadLetter, Job, Status
from tests.testapp.models import Run

from .helpers import status_of, statuses, wait_for

JOBS = 300
WORKERS = 3
CONCURRENCY = 4


@pytest.mark.django_db(transaction=True)
def test_several_workers_run_each_of_hundreds_of_jobs_exactly_once(workers, tmp_path):
    dupes = tmp_path / "dupes"
    # Started one after another: starting at the same moment is test_workers_starting_together_all_run.
    pool = [
        workers("--concurrency", str(CONCURRENCY), "--batch-size", "10", "--poll-interval", "0.1")
        for _ in range(WORKERS)
    ]

    # One commit makes them all visible at once, so the workers compete for every batch.
    with transaction.atomic():
        jobs = enqueue_many([("tests.record_run", {"dupes": str(dupes)})] * JOBS)

    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == JOBS,
        timeout=60,
        message=lambda: f"{JOBS} jobs to succeed: {statuses()}\n{pool[0].output()[-3000:]}",
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            (backends,) = cursor.fetchone()
        # A main and a LISTEN connection per worker, at most one per handler thread: no leak per job.
        assert backends <= WORKERS * (2 + CONCURRENCY)
    assert [worker.stop() for worker in pool] == [0] * WORKERS

    assert not dupes.exists(), f"jobs run twice: {dupes.read_text()}"
    ids = sorted(job.pk for job in jobs)
    assert sorted(Run.objects.values_list("job_id", flat=True)) == ids
    assert set(Job.objects.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    pids = set(Run.objects.values_list("pid", flat=True))
    assert pids <= {worker.pid for worker in pool}
    assert len(pids) > 1, "one worker ran every job: the test did not exercise competing workers"


@pytest.mark.django_db(transaction=True)
def test_unregistered_or_invalid_jobs_become_dead_letters_and_the_worker_goes_on(workers, tmp_path):
    worker = workers("--poll-interval", "0.1")
    # Rows enqueue() refuses to write, as left behind by a deploy that removed or changed a job.
    gone = Job.objects.create(name="gone.job", payload={"x": 1})
    invalid = Job.objects.create(name="tests.typed", payload={"client_id": "seven"})
    fine = enqueue("tests.record_run", {"dupes": str(tmp_path / "dupes")})

    wait_for(
        lambda: Job.objects.exclude(status__in=[Status.QUEUED, Status.RUNNING]).count() == 3,
        message=lambda: f"the jobs to finish: {statuses()}\n{worker.output()}",
    )
    assert [status_of(gone), status_of(invalid), status_of(fine)] == [Status.DEAD, Status.DEAD, Status.SUCCEEDED]
    letters = {letter.job_id: letter for letter in DeadLetter.objects.all()}
    assert set(letters) == {gone.pk, invalid.pk}
    assert "gone.job" in letters[gone.pk].error
    assert "client_id" in letters[invalid.pk].error and "schema" in letters[invalid.pk].error
    assert [letters[gone.pk].attempts, letters[invalid.pk].attempts] == [1, 1]  # no retry loop

    later = enqueue("tests.record_run", {"dupes": str(tmp_path / "dupes")})
    wait_for(lambda: status_of(later) == Status.SUCCEEDED, message="the worker to run a later job")
    assert worker.alive()
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_workers_starting_together_all_run(workers, tmp_path):
    pool = [workers("--poll-interval", "0.1", wait=False) for _ in range(WORKERS)]
    for worker in pool:
        worker.wait_started()
    with transaction.atomic():
        jobs = enqueue_many([("tests.record_run", {"dupes": str(tmp_path / "dupes")})] * 30)
    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == len(jobs),
        message=lambda: f"the jobs to succeed: {statuses()}",
    )
    assert [worker.stop() for worker in pool] == [0] * WORKERS
