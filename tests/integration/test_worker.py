"""The worker run in-process: claim → run → record, retries, dead letters, logs; and run_jobs."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.test.utils import override_settings
from django.utils import timezone

from doctorjob import enqueue, enqueue_many
from doctorjob.models import DeadLetter, Job, Status
from tests.testapp.models import Effect, Run

from .factories import JobFactory

# The worker's threads have their own connections: they see committed rows only. Flushing just
# these apps' tables between tests keeps PostgreSQL fast.
pytestmark = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])


def reload(job) -> Job:
    return Job.objects.get(pk=job.pk)


def messages(caplog, event: str) -> list[str]:
    """The doctorjob log lines that start with ``event``."""
    return [r.getMessage() for r in caplog.records if r.name == "doctorjob" and r.getMessage().startswith(event)]


# -- outcomes ---------------------------------------------------------------------------------


def test_successful_job_saves_its_result(run_worker):
    job = enqueue("tests.noop", {"n": 3})
    worker = run_worker()
    job = reload(job)
    assert (job.status, job.result, job.attempts, job.error) == (Status.SUCCEEDED, {"n": 3}, 1, "")
    assert job.finished_at is not None and job.lease_expires_at is None
    assert worker.processed == 1


def test_burst_worker_drains_every_runnable_job(run_worker):
    jobs = enqueue_many([("tests.record_run", {}) for _ in range(12)])
    run_worker(concurrency=3, batch_size=5)
    assert Job.objects.filter(status=Status.SUCCEEDED).count() == 12
    assert sorted(Run.objects.values_list("job_id", flat=True)) == sorted(j.pk for j in jobs)


def test_failing_job_is_retried_later_with_backoff_keeping_error_and_traceback(run_worker):
    job = enqueue("integration.fail_later", {"message": "smtp down"})
    before = timezone.now()
    run_worker()
    after = timezone.now()
    job = reload(job)
    assert (job.status, job.attempts) == (Status.QUEUED, 1)
    # backoff={"base": 60, "jitter": 0}: the first retry waits exactly a minute.
    assert before + timedelta(seconds=60) <= job.run_at <= after + timedelta(seconds=60)
    assert job.error == "RuntimeError: smtp down"
    assert "Traceback (most recent call last)" in job.traceback
    assert "fail_later" in job.traceback and "RuntimeError: smtp down" in job.traceback
    assert (job.lease_id, job.worker) == (None, "")
    assert not DeadLetter.objects.exists()


def test_default_backoff_waits_at_least_a_second_before_the_first_retry(run_worker):
    job = enqueue("integration.fail_default_backoff")
    before = timezone.now()
    run_worker()
    after = timezone.now()
    job = reload(job)
    assert job.status == Status.QUEUED
    # Global default: base 1s, jitter up to +50%.
    assert before + timedelta(seconds=1) <= job.run_at <= after + timedelta(seconds=1.5)


def test_job_that_succeeds_on_retry_ends_succeeded_without_error(run_worker):
    job = enqueue("tests.fail_once")
    run_worker()
    job = reload(job)
    assert (job.status, job.attempts, job.result, job.error) == (Status.SUCCEEDED, 2, {"attempt": 2}, "")


def test_job_that_keeps_failing_ends_dead_with_its_own_dead_letter(run_worker):
    job = enqueue("integration.always_fail", {"to": "a@example.com"}, key="k", priority=2)
    run_worker()
    job = reload(job)
    assert (job.status, job.attempts, job.error) == (Status.DEAD, 3, "RuntimeError: attempt 3 failed")
    letter = DeadLetter.objects.get()
    assert letter.job_id == job.pk
    assert (letter.name, letter.queue, letter.payload, letter.priority, letter.key) == (
        "integration.always_fail",
        "default",
        {"to": "a@example.com"},
        2,
        "k",
    )
    assert (letter.attempts, letter.max_attempts) == (3, 3)
    assert letter.error == "RuntimeError: attempt 3 failed"
    assert "RuntimeError: attempt 3 failed" in letter.traceback
    assert letter.created_at == job.finished_at, "the job and its dead letter are written together"
    assert letter.requeued_at is None


def test_permanent_error_dead_letters_at_the_first_attempt(run_worker):
    job = enqueue("tests.permanent")
    run_worker()
    job = reload(job)
    assert (job.status, job.attempts) == (Status.DEAD, 1)
    assert job.max_attempts == 3
    letter = DeadLetter.objects.get(job_id=job.pk)
    assert letter.error == "PermanentError: this will never work"
    assert "PermanentError" in letter.traceback


def test_payload_failing_its_schema_at_run_time_is_dead_lettered_with_the_reason(run_worker):
    bad = JobFactory(name="tests.typed", payload={"client_id": "seven"})  # written before the schema existed
    good = enqueue("tests.noop")
    run_worker()
    assert reload(bad).status == Status.DEAD
    assert reload(good).status == Status.SUCCEEDED, "the worker carries on"
    letter = DeadLetter.objects.get(job_id=bad.pk)
    assert "schema of job 'tests.typed'" in letter.error
    assert "payload['client_id']" in letter.error
    assert letter.attempts == 1


def test_job_whose_name_is_no_longer_registered_is_dead_lettered(run_worker):
    gone = JobFactory(name="accounts.removed_job", max_attempts=5)
    good = enqueue("tests.noop")
    run_worker()
    assert reload(gone).status == Status.DEAD
    assert reload(good).status == Status.SUCCEEDED
    letter = DeadLetter.objects.get(job_id=gone.pk)
    assert "unknown job 'accounts.removed_job'" in letter.error
    assert letter.attempts == 1


def test_result_that_is_not_json_is_not_saved_but_the_job_succeeds(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    job = enqueue("integration.unserialisable_result")
    run_worker()
    job = reload(job)
    assert (job.status, job.result) == (Status.SUCCEEDED, None)
    assert any("result['ids'] is a set, not JSON" in r.getMessage() for r in caplog.records)


def test_atomic_job_commits_its_writes_with_its_success(run_worker):
    job = enqueue("tests.atomic_write")
    run_worker()
    assert reload(job).status == Status.SUCCEEDED
    assert list(Effect.objects.values_list("job_id", flat=True)) == [job.pk]


def test_atomic_job_that_fails_leaves_no_writes(run_worker):
    job = enqueue("integration.atomic_then_fail")
    run_worker()
    assert reload(job).status == Status.DEAD
    assert not Effect.objects.exists()


def test_late_success_of_a_job_another_worker_took_over_changes_nothing(run_worker):
    job = enqueue("integration.taken_over")
    run_worker()
    job = reload(job)
    assert (job.status, job.worker, job.attempts, job.result) == (Status.RUNNING, "rescuer", 2, None)


def test_late_success_is_logged_as_a_lost_lease_not_a_success(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    job = enqueue("integration.taken_over")
    run_worker()
    assert not messages(caplog, f"succeeded job_id={job.pk} ")
    assert messages(caplog, f"lease lost job_id={job.pk} ")


def test_atomic_job_that_lost_its_lease_rolls_back_its_writes(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    job = enqueue("integration.atomic_taken_over")
    run_worker()
    job = reload(job)
    assert (job.status, job.worker, job.attempts, job.result) == (Status.RUNNING, "rescuer", 2, None)
    assert not Effect.objects.exists()
    assert messages(caplog, f"lease lost job_id={job.pk} ")


# -- which jobs, in which order ---------------------------------------------------------------


def test_larger_priority_runs_first(run_worker):
    low = enqueue("tests.record_run", priority=0)
    high = enqueue("tests.record_run", priority=10)
    middle = enqueue("tests.record_run", priority=5)
    run_worker(concurrency=1)
    assert list(Run.objects.order_by("pk").values_list("job_id", flat=True)) == [high.pk, middle.pk, low.pk]


def test_larger_priority_is_claimed_first(run_worker):
    low = enqueue("tests.record_run", priority=0)
    high = enqueue("tests.record_run", priority=10)
    middle = enqueue("tests.record_run", priority=5)
    run_worker(concurrency=1, batch_size=1)
    assert list(Run.objects.order_by("pk").values_list("job_id", flat=True)) == [high.pk, middle.pk, low.pk]


def test_job_due_later_is_not_run_by_a_burst_worker(run_worker):
    later = enqueue("tests.noop", delay=timedelta(hours=1))
    at = enqueue("tests.noop", run_at=timezone.now() + timedelta(minutes=5))
    now = enqueue("tests.noop")
    run_worker()
    assert reload(now).status == Status.SUCCEEDED
    for job in (later, at):
        job = reload(job)
        assert (job.status, job.attempts) == (Status.QUEUED, 0)


def test_worker_takes_jobs_only_from_its_queues(run_worker):
    a = enqueue("tests.noop", queue="a")
    b = enqueue("tests.noop", queue="b")
    c = enqueue("tests.noop", queue="c")
    run_worker(queues=["a", "b"])
    assert [reload(j).status for j in (a, b, c)] == [Status.SUCCEEDED, Status.SUCCEEDED, Status.QUEUED]


def test_worker_without_queues_takes_every_queue(run_worker):
    jobs = [enqueue("tests.noop", queue=q) for q in ("default", "emails", "reports")]
    run_worker()
    assert {reload(j).status for j in jobs} == {Status.SUCCEEDED}


def test_max_jobs_stops_after_that_many_jobs(run_worker):
    enqueue_many([("tests.noop", {"n": i}) for i in range(5)])
    worker = run_worker(burst=False, max_jobs=2)
    assert worker.processed == 2
    assert Job.objects.filter(status=Status.SUCCEEDED).count() == 2
    assert Job.objects.filter(status=Status.QUEUED, attempts=0).count() == 3


def test_worker_rescues_a_job_whose_worker_was_lost(run_worker):
    lost = JobFactory(
        running=True, name="tests.noop", max_attempts=3, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    run_worker()
    lost = reload(lost)
    assert (lost.status, lost.attempts) == (Status.SUCCEEDED, 2)


def test_worker_leaves_jobs_other_workers_hold_alone(run_worker):
    held = JobFactory(running=True, name="tests.noop")
    run_worker()
    held_now = reload(held)
    assert (held_now.status, held_now.lease_id, held_now.attempts) == (Status.RUNNING, held.lease_id, 1)


@override_settings(DOCTORJOB={"KEEP_SUCCEEDED": timedelta(hours=1)})
def test_worker_prunes_succeeded_jobs_older_than_keep_succeeded(run_worker):
    old = JobFactory(succeeded=True, finished_at=timezone.now() - timedelta(hours=2))
    recent = JobFactory(succeeded=True, finished_at=timezone.now() - timedelta(minutes=30))
    dead = JobFactory(dead=True, finished_at=timezone.now() - timedelta(days=30))
    run_worker()
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, dead.pk}
    assert not Job.objects.filter(pk=old.pk).exists()


# -- context and logs -------------------------------------------------------------------------


def test_handler_gets_a_context_describing_its_attempt(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    job = enqueue("integration.context", queue="q", key="ctx-key")
    run_worker()
    assert reload(job).result == {
        "job_id": job.pk,
        "name": "integration.context",
        "queue": "q",
        "attempt": 1,
        "max_attempts": 2,
        "key": "ctx-key",
        "logger": "doctorjob",
    }
    (line,) = [r.getMessage() for r in caplog.records if "hello from the handler" in r.getMessage()]
    assert f"job_id={job.pk}" in line and "name=integration.context" in line


def test_lifecycle_is_logged_with_job_id_name_and_attempt(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    ok = enqueue("tests.noop")
    failing = enqueue("integration.always_fail", max_attempts=2)
    run_worker()

    assert f"claimed job_id={ok.pk} name=tests.noop attempt=1" in messages(caplog, "claimed")
    (succeeded,) = messages(caplog, f"succeeded job_id={ok.pk} ")
    assert "name=tests.noop attempt=1 duration=" in succeeded

    claimed = [m for m in messages(caplog, "claimed") if f"job_id={failing.pk} " in m]
    assert claimed == [f"claimed job_id={failing.pk} name=integration.always_fail attempt={n}" for n in (1, 2)]
    (retrying,) = messages(caplog, f"retrying job_id={failing.pk} ")
    assert "name=integration.always_fail attempt=1 next_run_at=" in retrying
    next_run_at = retrying.split("next_run_at=")[1].split()[0]
    assert datetime.fromisoformat(next_run_at).tzinfo is not None
    (dead,) = messages(caplog, f"dead job_id={failing.pk} ")
    assert "name=integration.always_fail attempt=2 error=RuntimeError: attempt 2 failed" in dead
    levels = {r.getMessage().split()[0]: r.levelno for r in caplog.records if r.name == "doctorjob"}
    assert (levels["retrying"], levels["dead"]) == (logging.WARNING, logging.ERROR)


@pytest.mark.parametrize("payload", ["hello", '{"not": "parsed twice"}', 42, [1, "two"], None])
def test_payload_reaches_the_handler_as_the_json_value_enqueued(run_worker, payload):
    job = enqueue("integration.echo", payload)
    run_worker()
    job.refresh_from_db()
    expected = {} if payload is None else payload  # enqueue's payload defaults to {}
    assert (job.status, job.result) == (Status.SUCCEEDED, expected)


def test_quiet_worker_logs_no_line_per_job_but_still_logs_retries(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="doctorjob")
    enqueue("tests.noop")
    failing = enqueue("integration.always_fail", max_attempts=2)
    run_worker(log_jobs=False)  # what run_jobs -v 0 asks for

    assert not messages(caplog, "claimed") and not messages(caplog, "succeeded")
    assert messages(caplog, f"retrying job_id={failing.pk} ") and messages(caplog, f"dead job_id={failing.pk} ")


# -- run_jobs ---------------------------------------------------------------------------------


def run_jobs(*args: str, listen: bool = False) -> None:
    """call_command("run_jobs", ...), joining the threads it leaves behind (LISTEN on PostgreSQL)."""
    before = set(threading.enumerate())
    with override_settings(DOCTORJOB={} if listen else {"LISTEN_DATABASE": False}):
        call_command("run_jobs", *args)
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive(), f"run_jobs left {thread.name} running"


def test_run_jobs_burst_drains_the_queue_and_returns(restore_signal_handlers):
    jobs = enqueue_many([("tests.noop", {"n": i}) for i in range(5)])
    failing = enqueue("tests.permanent")
    run_jobs("--burst", "--concurrency", "2", "--batch-size", "2", "--lease", "3", listen=True)
    assert {reload(j).status for j in jobs} == {Status.SUCCEEDED}
    assert reload(failing).status == Status.DEAD


def test_run_jobs_takes_only_the_queues_it_is_given(restore_signal_handlers):
    a, b = enqueue("tests.noop", queue="a"), enqueue("tests.noop", queue="b")
    run_jobs("--burst", "--queues", "a")
    assert (reload(a).status, reload(b).status) == (Status.SUCCEEDED, Status.QUEUED)


def test_run_jobs_keeps_the_projects_logging_configuration(restore_signal_handlers):
    log = logging.getLogger("doctorjob")
    before = (list(log.handlers), log.level, log.propagate)
    run_jobs("--burst", "-v", "2")
    assert (list(log.handlers), log.level, log.propagate) == before


def test_run_jobs_puts_back_the_signal_handlers_it_found(restore_signal_handlers):
    run_jobs("--burst")
    assert signal.getsignal(signal.SIGINT) is restore_signal_handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is restore_signal_handlers[signal.SIGTERM]
