"""Execution history and workers: a JobExecution row per attempt (succeeded, failed, lost),
Worker rows (registered while running, removed on exit, marked lost when their heartbeat stops),
the admin pages showing them, and the job's context on every log record made in a handler."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import factory
import pytest
from django.urls import reverse
from django.utils import timezone
from factory.django import DjangoModelFactory

from doctorjob import enqueue
from doctorjob.leases import WORKER_LOST
from doctorjob.models import DeadLetter, Job, JobExecution, Outcome, Status, Worker

from .factories import JobFactory

pytestmark = pytest.mark.django_db
in_worker = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])

# A handler's duration is measured from when it starts, started_at is when its job was claimed.
CLOCK_SLACK = timedelta(milliseconds=50)


class WorkerRowFactory(DjangoModelFactory):
    """The row of a worker process, as run_jobs writes it at start and on each heartbeat."""

    class Meta:
        model = Worker

    name = factory.Sequence(lambda n: f"other-host:{1000 + n}:abcdef")
    host = "other-host"
    pid = factory.Sequence(lambda n: 1000 + n)
    lease = 3.0


class JobExecutionFactory(DjangoModelFactory):
    class Meta:
        model = JobExecution

    job = factory.SubFactory(JobFactory, succeeded=True)
    worker = "other-host:1000:abcdef"
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyAttribute(lambda e: e.started_at + timedelta(seconds=2))
    duration = timedelta(seconds=2)
    outcome = Outcome.SUCCEEDED


def executions(job) -> list[JobExecution]:
    return list(JobExecution.objects.filter(job_id=job.pk).order_by("attempt", "id"))


def assert_timed(execution: JobExecution) -> None:
    assert execution.started_at is not None and execution.finished_at >= execution.started_at
    assert timedelta(0) <= execution.duration <= execution.finished_at - execution.started_at + CLOCK_SLACK


# -- one execution per attempt ------------------------------------------------------------------


@in_worker
def test_each_attempt_has_an_execution_with_its_worker_times_and_outcome(run_worker):
    job = enqueue("tests.fail_once")

    worker = run_worker()

    failed, succeeded = executions(job)
    assert (failed.attempt, failed.outcome, failed.error) == (1, Outcome.FAILED, "RuntimeError: first attempt fails")
    assert (succeeded.attempt, succeeded.outcome, succeeded.error) == (2, Outcome.SUCCEEDED, "")
    assert failed.worker == succeeded.worker == worker.id
    for execution in (failed, succeeded):
        assert_timed(execution)
    assert failed.finished_at <= succeeded.started_at


@in_worker
def test_a_job_that_fails_every_attempt_has_a_failed_execution_per_attempt(run_worker):
    job = enqueue("integration.always_fail")

    run_worker()

    assert [(e.attempt, e.outcome, e.error) for e in executions(job)] == [
        (n, Outcome.FAILED, f"RuntimeError: attempt {n} failed") for n in (1, 2, 3)
    ]
    assert Job.objects.get(pk=job.pk).status == Status.DEAD


@in_worker
def test_an_attempt_whose_worker_vanished_is_recorded_lost_with_that_worker(run_worker):
    started = timezone.now() - timedelta(seconds=40)
    job = JobFactory(
        running=True,
        name="tests.noop",
        worker="gone-host:4242:abcdef",
        started_at=started,
        lease_expires_at=started + timedelta(seconds=30),
    )

    run_worker()  # sweeps the expired lease, then runs the job again

    lost, succeeded = executions(job)
    assert (lost.attempt, lost.outcome, lost.worker, lost.error) == (
        1,
        Outcome.LOST,
        "gone-host:4242:abcdef",
        WORKER_LOST,
    )
    assert lost.started_at == started and lost.duration == lost.finished_at - started
    assert (succeeded.attempt, succeeded.outcome) == (2, Outcome.SUCCEEDED)


@in_worker
def test_executions_outlive_the_worker_row(run_worker):
    job = enqueue("tests.noop")

    worker = run_worker()  # exits cleanly: its row is removed
    WorkerRowFactory(name="other-host:1:abcdef").delete()

    assert not Worker.objects.exists()
    assert [e.worker for e in executions(job)] == [worker.id]


# -- worker rows --------------------------------------------------------------------------------


@in_worker
def test_a_worker_has_a_row_while_it_runs_and_removes_it_on_a_clean_exit(run_worker):
    job = enqueue("issue4.workers_seen")

    run_worker(queues=["default", "emails"], concurrency=2, lease=6)

    assert Job.objects.get(pk=job.pk).result == [
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": "default,emails",
            "concurrency": 2,
            "lease": 6.0,
            "lost": False,
        }
    ]
    assert not Worker.objects.exists()


@in_worker
def test_a_worker_marks_rows_lost_once_their_heartbeat_is_older_than_three_leases(run_worker):
    now = timezone.now()
    stopped = WorkerRowFactory(lease=3, last_heartbeat=now - timedelta(seconds=10))
    beating = WorkerRowFactory(lease=3, last_heartbeat=now - timedelta(seconds=5))
    long_lease = WorkerRowFactory(lease=30, last_heartbeat=now - timedelta(seconds=60))

    run_worker()

    assert {w.pk: w.lost for w in Worker.objects.all()} == {stopped.pk: True, beating.pk: False, long_lease.pk: False}


# -- the admin ----------------------------------------------------------------------------------


def test_the_job_page_lists_its_executions(admin_client):
    failed = JobExecutionFactory(
        outcome=Outcome.FAILED,
        error="RuntimeError: smtp down",
        attempt=1,
        job__status=Status.SKIPPED,
        job__attempts=2,
        job__name="issue4.versioned",
        job__error="version 1 of job 'issue4.versioned' is below its minimal supported version 2",
    )
    JobExecutionFactory(
        job=failed.job,
        attempt=2,
        outcome=Outcome.SKIPPED,
        worker="host-b:2:abcdef",
        error="version 1 of job 'issue4.versioned' is below its minimal supported version 2",
    )

    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[failed.job.pk]))

    assert page.status_code == 200
    [inline] = page.context["inline_admin_formsets"]
    assert [(f.original.attempt, f.original.outcome) for f in inline] == [(1, "failed"), (2, "skipped")]
    text = page.content.decode()
    assert "RuntimeError: smtp down" in text and "host-b:2:abcdef" in text
    assert "is below its minimal supported version 2" in text


def test_the_workers_page_lists_workers_and_which_are_lost(admin_client):
    WorkerRowFactory(name="host-a:1:aaaaaa")
    WorkerRowFactory(name="host-b:2:bbbbbb", lost=True)

    page = admin_client.get(reverse("admin:doctorjob_worker_changelist"))
    lost = admin_client.get(reverse("admin:doctorjob_worker_changelist") + "?lost__exact=1")

    assert "host-a:1:aaaaaa" in page.content.decode() and "host-b:2:bbbbbb" in page.content.decode()
    assert [w.name for w in lost.context["cl"].result_list] == ["host-b:2:bbbbbb"]


def test_executions_cannot_be_added_or_deleted_from_the_job_page(admin_client):
    execution = JobExecutionFactory()

    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[execution.job.pk]))

    [inline] = page.context["inline_admin_formsets"]
    assert not inline.has_add_permission and not inline.has_delete_permission
    assert not inline.has_change_permission


# -- log context --------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records():
    """Every record any logger propagates to the root logger during the test."""
    handler = Collect()
    logging.getLogger().addHandler(handler)
    yield handler.records
    logging.getLogger().removeHandler(handler)


@in_worker
def test_every_log_record_made_inside_a_handler_carries_the_jobs_context(run_worker, log_records):
    job = enqueue("issue4.logs", {"fail_first": True})  # version 2; the first attempt fails

    run_worker()

    inside = [r for r in log_records if "issue4-inside" in r.getMessage()]
    assert {r.name for r in inside} == {"issue4.some_library", "root", "doctorjob"}
    assert len(inside) == 10  # five records per attempt
    assert {(r.job_id, r.job_name, r.job_version) for r in inside} == {(job.pk, "issue4.logs", 2)}
    assert sorted(r.attempt for r in inside) == [1] * 5 + [2] * 5
    assert [r.getMessage() for r in inside if "ctx.logger" in r.getMessage()] == [
        f"[job_id={job.pk} name=issue4.logs] issue4-inside ctx.logger info"
    ] * 2


@in_worker
def test_log_records_made_outside_a_handler_have_empty_job_context(run_worker, log_records):
    enqueue("issue4.logs")

    run_worker()
    logging.getLogger("issue4.some_library").warning("issue4-outside")

    outside = [
        r for r in log_records if r.getMessage().startswith(("worker started", "succeeded job_id", "issue4-outside"))
    ]
    assert len(outside) == 3
    # Present but None, so a formatter using %(job_id)s works on every line.
    assert all((r.job_id, r.job_name, r.attempt, r.job_version) == (None, None, None, None) for r in outside)
    assert not DeadLetter.objects.exists()
