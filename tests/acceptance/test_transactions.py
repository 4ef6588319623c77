"""Jobs are rows in the caller's transaction: invisible to workers until commit, gone on
rollback, and one per idempotency key even when two transactions race for it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from doctorjob import enqueue
from doctorjob.models import Job, Status
from tests.testapp.models import Client

from .helpers import holds_for, in_thread, status_of, wait_for

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL")


@pytest.mark.django_db(transaction=True)
def test_job_enqueued_in_an_open_transaction_is_not_claimed_before_commit(workers, tmp_path):
    hidden, seen = tmp_path / "hidden", tmp_path / "seen"
    worker = workers("--poll-interval", "0.1")

    with transaction.atomic():
        job = enqueue("tests.acceptance.touch", {"path": str(hidden)})
        if connection.vendor == "postgresql":
            # The worker is claiming meanwhile: a job committed by another connection runs.
            in_thread(lambda: enqueue("tests.acceptance.touch", {"path": str(seen)})).result()
            wait_for(seen.exists, message=lambda: f"a committed job to run:\n{worker.output()}")
        else:
            # SQLite serialises writers: the worker's claim waits for this transaction to end.
            holds_for(lambda: not hidden.exists(), duration=1.0, message="the job not running")
        assert not hidden.exists()
        assert status_of(job) == Status.QUEUED

    wait_for(hidden.exists, message=lambda: f"the job to run once committed:\n{worker.output()}")
    wait_for(lambda: status_of(job) == Status.SUCCEEDED, message="the job to succeed")
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_rolled_back_enqueue_never_runs(workers, tmp_path):
    ghost, sentinel = tmp_path / "ghost", tmp_path / "sentinel"
    worker = workers("--poll-interval", "0.1")

    with transaction.atomic():
        enqueue("tests.acceptance.touch", {"path": str(ghost)})
        transaction.set_rollback(True)
    # Enqueued after the rollback: once it has run, the worker has had every chance to run the other.
    enqueue("tests.acceptance.touch", {"path": str(sentinel)})

    wait_for(sentinel.exists, message=lambda: f"the committed job to run:\n{worker.output()}")
    assert not ghost.exists()
    assert not Job.objects.filter(payload__path=str(ghost)).exists()
    assert worker.stop() == 0


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_second_enqueue_with_a_key_waits_for_the_first_then_returns_its_job():
    key = "client:42:welcome"
    first_wrote, first_may_commit = threading.Event(), threading.Event()
    second_backend: list[int] = []

    def first():
        with transaction.atomic():
            job = enqueue("tests.noop", {"n": 1}, key=key)
            first_wrote.set()
            assert first_may_commit.wait(30)
        return job

    def second():
        with transaction.atomic():
            Client.objects.create(email="before@example.com")
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                second_backend.append(cursor.fetchone()[0])
            job = enqueue("tests.noop", {"n": 2}, key=key)
            Client.objects.create(email="after@example.com")  # the transaction is still usable
        return job

    first_call = in_thread(first, "first")
    try:
        wait_for(first_wrote.is_set, message="the first enqueue")
        second_call = in_thread(second, "second")
        # The second INSERT waits on the first's uncommitted key: a lock, not a check-then-insert.
        wait_for(
            lambda: second_backend and waiting_on_lock(second_backend[0]),
            message="the second enqueue to wait for the first transaction",
        )
        assert not second_call.done()
    finally:
        first_may_commit.set()
    first_job = first_call.result()
    second_job = second_call.result()

    assert second_job.pk == first_job.pk
    assert list(Job.objects.filter(key=key).values_list("pk", "payload")) == [(first_job.pk, {"n": 1})]
    assert set(Client.objects.values_list("email", flat=True)) == {"before@example.com", "after@example.com"}


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_second_enqueue_with_a_key_writes_its_job_when_the_first_rolls_back():
    key = "client:43:welcome"
    first_wrote, first_may_end = threading.Event(), threading.Event()
    second_backend: list[int] = []

    def first():
        with transaction.atomic():
            enqueue("tests.noop", {"n": 1}, key=key)
            first_wrote.set()
            assert first_may_end.wait(30)
            transaction.set_rollback(True)

    def second():
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                second_backend.append(cursor.fetchone()[0])
            return enqueue("tests.noop", {"n": 2}, key=key)

    first_call = in_thread(first, "first")
    try:
        wait_for(first_wrote.is_set, message="the first enqueue")
        second_call = in_thread(second, "second")
        wait_for(
            lambda: second_backend and waiting_on_lock(second_backend[0]),
            message="the second enqueue to wait for the first transaction",
        )
    finally:
        first_may_end.set()
    first_call.result()
    second_job = second_call.result()

    assert list(Job.objects.filter(key=key).values_list("pk", "payload")) == [(second_job.pk, {"n": 2})]


def waiting_on_lock(backend_pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [backend_pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"
