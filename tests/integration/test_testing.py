"""doctorjob.testing: the helpers a project's tests use, inside Django's TestCase transaction
(pytest-django's plain ``django_db``), where a real worker could not see the rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from doctorjob import InvalidPayload, enqueue
from doctorjob.models import DeadLetter, Job, JobExecution, QueueState, Status
from doctorjob.testing import assert_enqueued, enqueued, perform, run_jobs
from tests.testapp.models import Run

pytestmark = pytest.mark.django_db  # one transaction per test, rolled back: as django.test.TestCase


def test_run_jobs_runs_what_the_test_enqueued_in_its_own_transaction():
    with transaction.atomic():
        job = enqueue("tests.record_run")
    ran = run_jobs()
    assert [(r.job.pk, r.outcome, r.result) for r in ran] == [(job.pk, "succeeded", {"pid": ran[0].result["pid"]})]
    assert Run.objects.filter(job_id=job.pk).exists()
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.attempts) == (Status.SUCCEEDED, 1)
    assert JobExecution.objects.filter(job_id=job.pk, outcome="succeeded").exists()


def test_run_jobs_goes_on_with_jobs_enqueued_by_handlers_and_retries_without_their_backoff():
    parent = enqueue("integration.enqueues_another")
    slow = enqueue("integration.fails_once_slowly")
    ran = run_jobs()
    outcomes = [(r.job.name, r.outcome) for r in ran]
    assert outcomes == [
        ("integration.enqueues_another", "succeeded"),
        ("integration.fails_once_slowly", "retrying"),
        ("tests.noop", "succeeded"),
        ("integration.fails_once_slowly", "succeeded"),
    ]
    assert Job.objects.get(payload={"from": parent.pk}).status == Status.SUCCEEDED
    assert Job.objects.get(pk=slow.pk).attempts == 2


def test_run_jobs_once_runs_only_what_was_due_and_now_runs_later_jobs():
    later = enqueue("tests.noop", {"n": 1}, delay=timedelta(hours=2))
    enqueue("integration.enqueues_another")
    assert [r.job.name for r in run_jobs(until_empty=False)] == ["integration.enqueues_another"]
    assert [r.job.name for r in run_jobs()] == ["tests.noop"]  # the one it enqueued
    assert Job.objects.get(pk=later.pk).status == Status.QUEUED
    assert [r.job.pk for r in run_jobs(now=timezone.now() + timedelta(hours=3))] == [later.pk]


def test_run_jobs_takes_only_the_given_queues():
    enqueue("tests.noop", queue="a")
    b = enqueue("tests.noop", queue="b")
    assert [r.job.pk for r in run_jobs(queues=["b"])] == [b.pk]


def test_run_jobs_runs_jobs_of_one_key_one_after_the_other_and_leaves_paused_work_alone():
    first, second = enqueue("integration.singleton"), enqueue("integration.singleton")
    paused = enqueue("tests.noop", queue="paused")
    QueueState.objects.create(name="paused", paused=True)
    assert [(r.job.pk, r.outcome) for r in run_jobs()] == [(first.pk, "succeeded"), (second.pk, "succeeded")]
    assert Job.objects.get(pk=paused.pk).status == Status.QUEUED


def test_a_failed_attempt_is_rolled_back_dead_lettered_and_the_test_transaction_stays_usable():
    job = enqueue("integration.writes_then_fails")
    [ran] = run_jobs()
    assert (ran.outcome, ran.error) == ("dead", "RuntimeError: after the write")
    assert not Run.objects.filter(job_id=job.pk).exists()
    assert DeadLetter.objects.get(job_id=job.pk).error == "RuntimeError: after the write"
    with connection.cursor() as cursor:  # still usable
        cursor.execute("SELECT 1")


def test_assert_enqueued_matches_payload_fields_and_count_and_lists_what_was_enqueued():
    enqueue("tests.noop", {"n": 1}, queue="a")
    enqueue("tests.noop", {"n": 2}, key="k")
    assert len(assert_enqueued("tests.noop")) == 2
    assert_enqueued("tests.noop", {"n": 1}, queue="a", count=1)
    assert_enqueued("tests.noop", key="k")
    with pytest.raises(AssertionError) as failure:
        assert_enqueued("tests.noop", {"n": 3})
    message = str(failure.value)
    assert "expected at least one job(s) 'tests.noop' payload={'n': 3} enqueued, found 0" in message
    assert "tests.noop payload={'n': 1} queue='a'" in message and "key='k'" in message
    with pytest.raises(AssertionError, match="expected 1 job"):
        assert_enqueued("tests.noop", count=1)
    assert [j.payload for j in enqueued("tests.noop")] == [{"n": 1}, {"n": 2}]
    run_jobs()
    assert enqueued() == []
    with pytest.raises(AssertionError, match="enqueued: nothing"):
        assert_enqueued("tests.noop")


def test_perform_checks_the_payload_as_enqueue_does_and_runs_the_handler_with_a_context():
    assert perform("tests.fail_once", attempt=2) == {"attempt": 2}
    with pytest.raises(RuntimeError, match="first attempt fails"):
        perform("tests.fail_once")
    with pytest.raises(InvalidPayload, match="client_id"):
        perform("tests.typed", {"client_id": "not a number"})
    assert not Job.objects.exists()


def test_the_pytest_fixture_gives_the_helpers(doctorjob):
    enqueue("tests.noop")
    doctorjob.assert_enqueued("tests.noop", count=1)
    assert [r.outcome for r in doctorjob.run_jobs()] == ["succeeded"]


def test_run_jobs_runs_a_tree_children_first_and_keeps_progress_across_attempts():
    from doctorjob import Child

    with transaction.atomic():
        parent = enqueue("trees.combine", children=[Child("trees.leaf", {"value": v}) for v in (1, 2)])
        resumed = enqueue("trees.resumes", {"to": 4, "fail_at": 2})
    names = [r.job.name for r in run_jobs()]
    assert names.index("trees.combine") > max(i for i, name in enumerate(names) if name == "trees.leaf")
    parent.refresh_from_db()
    assert parent.status == Status.SUCCEEDED
    assert sorted(parent.result["results"].values()) == [1, 2]
    resumed.refresh_from_db()
    assert resumed.result == {"started_from": 2, "attempt": 2} and resumed.progress == {"done": 4}
