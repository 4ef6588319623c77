"""@job(timeout=...): an attempt past its timeout fails as timed out and is retried, while the
worker keeps its concurrency; too many stuck threads make the worker exit for a fresh process;
an atomic job's statements are cancelled by the database (issue 13, item 9)."""

from __future__ import annotations

import pytest
from django.db import connection

from doctorjob import enqueue
from doctorjob.models import Job, JobExecution, Status
from tests.testapp.models import Run

from .helpers import status_of, statuses, wait_for


@pytest.mark.django_db(transaction=True)
def test_an_attempt_past_its_timeout_is_retried_then_dead_and_the_worker_keeps_its_concurrency(workers, tmp_path):
    hung = enqueue("tests.acceptance.hangs", {"dir": str(tmp_path)})
    worker = workers("--concurrency", "2", "--poll-interval", "0.1")
    wait_for(
        lambda: status_of(hung) == Status.DEAD,
        timeout=30,
        message=lambda: f"the hung job to time out twice: {statuses()}\n{worker.output()}",
    )
    job = Job.objects.get(pk=hung.pk)
    assert (job.attempts, job.error) == (2, "timed out after 1 s")
    assert (
        list(JobExecution.objects.filter(job_id=hung.pk).order_by("attempt").values_list("outcome", "error"))
        == [("failed", "timed out after 1 s")] * 2
    )

    # Two threads are stuck in the two attempts; the worker still runs two jobs at once.
    started = [tmp_path / f"block-{i}" for i in (1, 2)]
    release = tmp_path / "release"
    blocking = [enqueue("tests.block", {"started": str(s), "release": str(release)}) for s in started]
    wait_for(lambda: all(s.exists() for s in started), message=lambda: f"two jobs at once:\n{worker.output()}")
    release.touch()
    wait_for(lambda: {status_of(b) for b in blocking} == {Status.SUCCEEDED}, message=lambda: worker.output())
    assert f"timed out job_id={hung.pk} name=tests.acceptance.hangs attempt=1 after 1s" in worker.output()
    assert worker.alive()
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_more_stuck_threads_than_its_concurrency_exits_for_a_fresh_process(workers, tmp_path):
    hung = enqueue("tests.acceptance.hangs", {"dir": str(tmp_path)})
    worker = workers("--concurrency", "1", "--poll-interval", "0.1", "--shutdown-timeout", "1")
    assert worker.wait(30) == 3
    assert "handler threads are stuck in timed-out jobs (concurrency 1)" in worker.output()
    job = Job.objects.get(pk=hung.pk)
    assert (job.status, job.attempts, job.error) == (Status.DEAD, 2, "timed out after 1 s")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement_timeout is PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_an_atomic_jobs_statements_past_its_timeout_are_cancelled_by_the_database(workers):
    hung = enqueue("tests.acceptance.hangs_in_the_database")
    worker = workers("--concurrency", "1", "--poll-interval", "0.1")
    wait_for(lambda: status_of(hung) == Status.DEAD, timeout=30, message=lambda: worker.output())
    assert not Run.objects.exists(), "each attempt's writes were rolled back"
    assert worker.alive(), "the database cancelled the statement: no thread was left stuck"
    assert "stuck" not in worker.output()
    assert worker.stop() == 0
