"""The state changes a worker writes, each fenced by the lease it claimed the job under."""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from doctorjob import enqueue, enqueue_many, leases
from doctorjob.leases import WORKER_LOST
from doctorjob.models import DeadLetter, Job, JobExecution, Status

from .factories import DeadLetterFactory, JobFactory

pytestmark = pytest.mark.django_db

DB = "default"


def claim(worker: str = "worker-a", *, limit: int = 10, lease: float = 30, queues=None):
    return leases.claim(DB, worker=worker, limit=limit, lease=lease, queues=queues)


def enqueue_many_noop(count: int) -> list[Job]:
    return enqueue_many([("tests.noop", {"n": i}) for i in range(count)])


def expire(*jobs) -> None:
    """Let the leases of ``jobs`` run out, as if their worker had stopped renewing them."""
    Job.objects.filter(pk__in=[j.id for j in jobs]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def take_over(job):
    """Simulate another worker rescuing ``job`` after its holder's lease ran out."""
    expire(job)
    requeued, dead = leases.sweep_expired(DB)
    assert [j.id for j in requeued] == [job.id] and not dead
    (new,) = claim("worker-b", limit=1)
    assert new.id == job.id and new.lease_id != job.lease_id
    return new


# -- claim ------------------------------------------------------------------------------------


def test_claim_marks_jobs_running_under_a_new_lease():
    job = enqueue("tests.noop", {"n": 1}, key="k")
    before = timezone.now()
    (claimed,) = claim("host:1", lease=30)
    row = Job.objects.get(pk=job.pk)
    assert (claimed.id, claimed.name, claimed.payload, claimed.key) == (job.pk, "tests.noop", {"n": 1}, "k")
    assert (row.status, row.attempts, row.worker, row.lease_id) == (Status.RUNNING, 1, "host:1", claimed.lease_id)
    assert claimed.attempts == 1
    assert before + timedelta(seconds=30) <= row.lease_expires_at <= timezone.now() + timedelta(seconds=30)
    assert before <= row.started_at <= timezone.now()


def test_claim_returns_each_payload_as_it_was_enqueued():
    payloads = [{"text": "zoë ✓ 💡", "nested": {"list": [1, 2.5, None, True, "x"]}}, ["a", {"b": []}],
                "a JSON string", 12, 1.5, False, {}, {"escapes": "quote \" backslash \\ newline \n tab \t"}]
    jobs = enqueue_many([("tests.noop", payload) for payload in payloads])
    claimed = {job.id: job.payload for job in claim(limit=len(payloads))}
    assert [claimed[job.pk] for job in jobs] == payloads


def test_the_payload_loader_reads_jsonb_from_bytes_and_memoryview_and_refuses_other_versions():
    psycopg = pytest.importorskip("psycopg")
    load = leases._jsonb_loader()(3802).load  # 3802: jsonb
    document = b'\x01{"text": "zo\xc3\xab", "n": [1, 2.5, null]}'
    assert load(document) == load(memoryview(document)) == {"text": "zoë", "n": [1, 2.5, None]}
    with pytest.raises(psycopg.DataError, match="unknown jsonb binary format: 2"):
        load(b'\x02{}')


def test_claim_counts_the_attempt_each_time():
    job = enqueue("tests.noop")
    Job.objects.filter(pk=job.pk).update(attempts=2)
    (claimed,) = claim()
    assert claimed.attempts == 3 == Job.objects.get(pk=job.pk).attempts


def test_second_claim_does_not_take_the_same_jobs():
    enqueue_many_noop(5)
    first = claim("worker-a", limit=3)
    second = claim("worker-b", limit=3)
    assert len(first) == 3 and len(second) == 2
    assert not {j.id for j in first} & {j.id for j in second}
    assert claim("worker-c") == []
    assert Job.objects.filter(worker="worker-a").count() == 3


def test_claim_takes_larger_priority_first_then_earlier_run_at():
    now = timezone.now()
    low = enqueue("tests.noop", priority=-1)
    late = enqueue("tests.noop", run_at=now - timedelta(seconds=1))
    early = enqueue("tests.noop", run_at=now - timedelta(seconds=5))
    high = enqueue("tests.noop", priority=10)
    taken = [claim(limit=1)[0].id for _ in range(4)]
    assert taken == [high.pk, early.pk, late.pk, low.pk]


def test_claim_returns_a_batch_in_the_order_it_should_run():
    low = enqueue("tests.noop", priority=0)
    high = enqueue("tests.noop", priority=5)
    assert [j.id for j in claim(limit=10)] == [high.pk, low.pk]


def test_claim_ignores_jobs_not_due_yet():
    enqueue("tests.noop", delay=60)
    due = enqueue("tests.noop")
    assert [j.id for j in claim()] == [due.pk]


def test_claim_takes_only_the_given_queues():
    a = enqueue("tests.noop", queue="a")
    b = enqueue("tests.noop", queue="b")
    enqueue("tests.noop", queue="c")
    assert sorted(j.id for j in claim(queues=["a", "b"])) == [a.pk, b.pk]
    assert Job.objects.filter(queue="c", status=Status.QUEUED).count() == 1


def test_claim_takes_no_jobs_in_other_states():
    JobFactory(running=True)
    JobFactory(succeeded=True)
    JobFactory(dead=True)
    JobFactory(cancelled=True)
    assert claim() == []


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_the_claim_reads_jobs_in_index_order_whatever_the_statistics_say():
    """On a table the planner has no statistics for (a new one, as after a first migrate), it
    scans and sorts the whole runnable backlog to claim a batch; the claim's planner settings
    keep it on the ordered index, for that statement only."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("clearing the planner's statistics needs a superuser")
        cursor.execute("TRUNCATE doctorjob_job CASCADE")
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = 'doctorjob_job'::regclass")
    enqueue_many_noop(20_000)
    now = timezone.now()
    explain = "EXPLAIN " + leases._CLAIM.format(filters="")
    params = [uuid.uuid4(), "w", now, now, now, 100]

    def plan(**planner) -> str:
        return "\n".join(row[0] for row in leases.execute(connection, explain, params, **planner))

    assert "Sort" in plan(), "left to the statistics, the claim sorts the backlog"
    guided = plan(planner=leases._CLAIM_PLANNER)
    assert "Index Scan using doctorjob_job_claim_any" in guided and "Sort" not in guided
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_sort'), current_setting('enable_bitmapscan')")
        assert cursor.fetchone() == ("on", "on"), "the settings lasted for the claim only"
    with transaction.atomic():  # there they would last until the block ends: not applied
        assert "Sort" in plan(planner=leases._CLAIM_PLANNER)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_claim_skips_jobs_another_transaction_has_locked_instead_of_waiting():
    locked, free = enqueue("tests.noop"), enqueue("tests.noop")
    holding, finish = threading.Event(), threading.Event()

    def hold_lock() -> None:
        try:
            with transaction.atomic():
                list(Job.objects.select_for_update().filter(pk=locked.pk))
                holding.set()
                finish.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        assert holding.wait(10)
        taken = claim()
    finally:
        finish.set()
        thread.join()
    assert [j.id for j in taken] == [free.pk]


# -- renew ------------------------------------------------------------------------------------


def test_renew_extends_only_the_given_leases():
    enqueue_many_noop(2)
    (mine,) = claim("worker-a", limit=1, lease=5)
    (theirs,) = claim("worker-b", limit=1, lease=5)
    theirs_deadline = Job.objects.get(pk=theirs.id).lease_expires_at
    before = timezone.now()
    assert leases.renew(DB, [mine], 300) == 1
    assert Job.objects.get(pk=mine.id).lease_expires_at >= before + timedelta(seconds=300)
    assert Job.objects.get(pk=theirs.id).lease_expires_at == theirs_deadline


def test_renew_of_a_lease_taken_over_changes_nothing():
    enqueue("tests.noop")
    (old,) = claim(lease=5)
    new = take_over(old)
    deadline = Job.objects.get(pk=new.id).lease_expires_at
    assert leases.renew(DB, [old], 300) == 0
    assert Job.objects.get(pk=new.id).lease_expires_at == deadline


def test_renew_of_nothing_is_a_no_op():
    assert leases.renew(DB, [], 30) == 0


# -- succeed / retry_later / dead_letter --------------------------------------------------------


def test_succeed_records_many_results_at_once():
    enqueue_many_noop(3)
    jobs = claim()
    at = timezone.now()
    ours = leases.succeed(DB, [(j, {"i": i}, at, 0.5) for i, j in enumerate(jobs)], "worker-a")
    assert sorted(ours) == sorted(j.id for j in jobs)  # in no particular order
    rows = Job.objects.in_bulk([j.id for j in jobs])
    for i, j in enumerate(jobs):
        row = rows[j.id]
        assert (row.status, row.result, row.finished_at, row.lease_expires_at) == (Status.SUCCEEDED, {"i": i}, at, None)
    executions = JobExecution.objects.filter(job_id__in=[j.id for j in jobs])
    assert sorted(executions.values_list("outcome", "worker", "attempt")) == [("succeeded", "worker-a", 1)] * 3


def test_succeed_by_a_worker_whose_lease_was_taken_over_changes_nothing():
    enqueue_many_noop(2)
    old, other = claim(lease=5)
    new = take_over(old)
    done = [(old, "late", timezone.now(), 1.0), (other, "ok", timezone.now(), 1.0)]
    assert leases.succeed(DB, done, "worker-a") == [other.id]
    row = Job.objects.get(pk=old.id)
    assert (row.status, row.lease_id, row.worker, row.result) == (Status.RUNNING, new.lease_id, "worker-b", None)
    assert Job.objects.get(pk=other.id).status == Status.SUCCEEDED
    assert list(JobExecution.objects.filter(outcome="succeeded").values_list("job_id", flat=True)) == [other.id]


def test_retry_later_requeues_with_the_error_and_releases_the_lease():
    job = enqueue("tests.noop")
    (claimed,) = claim()
    run_at = timezone.now() + timedelta(minutes=5)
    assert leases.retry_later(DB, claimed, error="RuntimeError: boom", tb="Traceback...", run_at=run_at)
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.run_at, row.attempts) == (Status.QUEUED, run_at, 1)
    assert (row.error, row.traceback, row.lease_id, row.worker) == ("RuntimeError: boom", "Traceback...", None, "")


def test_retry_later_by_a_worker_whose_lease_was_taken_over_changes_nothing():
    enqueue("tests.noop")
    (old,) = claim(lease=5)
    new = take_over(old)
    assert not leases.retry_later(DB, old, error="late", tb="", run_at=timezone.now())
    row = Job.objects.get(pk=old.id)
    assert (row.status, row.lease_id, row.error) == (Status.RUNNING, new.lease_id, WORKER_LOST)


def test_dead_letter_marks_the_job_dead_and_copies_it():
    job = enqueue("tests.noop", {"n": 1}, key="k", queue="q", priority=3, max_attempts=2)
    (claimed,) = claim()
    assert leases.dead_letter(DB, claimed, error="PermanentError: no", tb="Traceback...")
    row = Job.objects.get(pk=job.pk)
    letter = DeadLetter.objects.get()
    assert (row.status, row.error, row.traceback) == (Status.DEAD, "PermanentError: no", "Traceback...")
    assert (letter.job_id, letter.name, letter.queue, letter.payload, letter.priority) == (
        job.pk, "tests.noop", "q", {"n": 1}, 3)
    assert (letter.attempts, letter.max_attempts, letter.key, letter.error, letter.traceback) == (
        1, 2, "k", "PermanentError: no", "Traceback...")
    assert letter.created_at == row.finished_at
    assert letter.requeued_at is None


def test_job_is_not_marked_dead_when_its_dead_letter_cannot_be_written(monkeypatch):
    job = enqueue("tests.noop")
    (claimed,) = claim()

    class Unwritable:
        class objects:
            @staticmethod
            def using(alias):
                raise IntegrityError("dead letter refused")

    monkeypatch.setattr(leases, "DeadLetter", Unwritable)
    with pytest.raises(IntegrityError):
        leases.dead_letter(DB, claimed, error="boom", tb="")
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.lease_id, row.error) == (Status.RUNNING, claimed.lease_id, "")


def test_dead_letter_by_a_worker_whose_lease_was_taken_over_changes_nothing():
    enqueue("tests.noop")
    (old,) = claim(lease=5)
    new = take_over(old)
    assert not leases.dead_letter(DB, old, error="late", tb="")
    assert Job.objects.get(pk=old.id).lease_id == new.lease_id
    assert not DeadLetter.objects.exists()


# -- release --------------------------------------------------------------------------------


def test_release_returns_jobs_to_the_queue_without_counting_the_attempt():
    enqueue_many_noop(2)
    jobs = claim()
    assert leases.release(DB, jobs) == 2
    for row in Job.objects.all():
        assert (row.status, row.attempts, row.lease_id, row.worker, row.lease_expires_at) == (
            Status.QUEUED, 0, None, "", None)
    assert len(claim()) == 2, "released jobs can be claimed again at once"


def test_release_by_a_worker_whose_lease_was_taken_over_changes_nothing():
    enqueue("tests.noop")
    (old,) = claim(lease=5)
    new = take_over(old)
    assert leases.release(DB, [old]) == 0
    row = Job.objects.get(pk=old.id)
    assert (row.status, row.attempts, row.lease_id) == (Status.RUNNING, 2, new.lease_id)


# -- sweep_expired ------------------------------------------------------------------------------


def test_sweep_requeues_jobs_whose_lease_ran_out_counting_the_attempt():
    job = enqueue("tests.noop", max_attempts=3)
    (claimed,) = claim()
    expire(claimed)
    requeued, dead = leases.sweep_expired(DB)
    assert [j.id for j in requeued] == [job.pk] and dead == []
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempts, row.error, row.lease_id, row.worker) == (Status.QUEUED, 1, WORKER_LOST, None, "")
    assert "worker lost" in row.error
    (again,) = claim()
    assert again.attempts == 2


def test_sweep_dead_letters_expired_jobs_without_attempts_left():
    job = enqueue("tests.noop", {"n": 1}, max_attempts=1)
    (claimed,) = claim()
    expire(claimed)
    requeued, dead = leases.sweep_expired(DB)
    assert requeued == [] and [j.id for j in dead] == [job.pk]
    assert Job.objects.get(pk=job.pk).status == Status.DEAD
    letter = DeadLetter.objects.get()
    assert (letter.job_id, letter.payload, letter.attempts, letter.error) == (job.pk, {"n": 1}, 1, WORKER_LOST)


def test_sweep_leaves_live_leases_alone():
    JobFactory(running=True)
    assert leases.sweep_expired(DB) == ([], [])
    assert Job.objects.get().status == Status.RUNNING


def test_sweep_does_not_requeue_a_job_whose_lease_was_renewed_meanwhile(monkeypatch):
    enqueue("tests.noop", max_attempts=3)
    (claimed,) = claim()
    expire(claimed)
    owned = leases._owned

    def renewed_first(alias, job):
        leases.renew(alias, [claimed], 30)  # the holder renews just after the sweep read
        return owned(alias, job)

    monkeypatch.setattr(leases, "_owned", renewed_first)
    assert leases.sweep_expired(DB) == ([], [])
    row = Job.objects.get(pk=claimed.id)
    assert (row.status, row.lease_id) == (Status.RUNNING, claimed.lease_id)


def test_sweep_does_not_dead_letter_a_job_whose_lease_was_renewed_meanwhile(monkeypatch):
    enqueue("tests.noop", max_attempts=1)
    (claimed,) = claim()
    expire(claimed)
    dead_letter = leases.dead_letter

    def renewed_first(alias, job, **kwargs):
        leases.renew(alias, [claimed], 30)  # the holder renews just after the sweep read
        return dead_letter(alias, job, **kwargs)

    monkeypatch.setattr(leases, "dead_letter", renewed_first)
    assert leases.sweep_expired(DB) == ([], [])
    assert Job.objects.get(pk=claimed.id).status == Status.RUNNING
    assert not DeadLetter.objects.exists()


# -- prune_succeeded ----------------------------------------------------------------------------


def test_prune_deletes_only_succeeded_jobs_older_than_the_retention():
    long_ago = timezone.now() - timedelta(days=8)
    old = JobFactory(succeeded=True, finished_at=long_ago)
    recent = JobFactory(succeeded=True, finished_at=timezone.now() - timedelta(days=6))
    dead = JobFactory(dead=True, finished_at=long_ago)
    cancelled = JobFactory(cancelled=True, finished_at=long_ago)
    queued = JobFactory(created_at=long_ago, run_at=long_ago)
    retried = JobFactory(finished_at=long_ago)  # queued for a retry; retry_later sets finished_at
    letter = DeadLetterFactory(job=dead)
    assert leases.prune_succeeded(DB, timedelta(days=7)) == 1
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, dead.pk, cancelled.pk, queued.pk, retried.pk}
    assert not Job.objects.filter(pk=old.pk).exists()
    assert DeadLetter.objects.get().pk == letter.pk


def test_prune_keeps_a_dead_letter_whose_requeued_job_is_pruned():
    letter = DeadLetterFactory(requeued=True, payload={"n": 1})
    Job.objects.filter(pk=letter.requeued_job_id).update(
        status=Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=30))
    assert leases.prune_succeeded(DB, timedelta(days=7)) == 1
    letter.refresh_from_db()
    assert letter.requeued_job_id is None
    assert letter.requeued_at is not None
    assert (letter.name, letter.payload, letter.error) == ("tests.noop", {"n": 1}, "RuntimeError: boom")


def test_prune_works_through_more_jobs_than_one_chunk():
    long_ago = timezone.now() - timedelta(days=8)
    JobFactory.create_batch(7, succeeded=True, finished_at=long_ago)
    assert leases.prune_succeeded(DB, timedelta(days=7), chunk=3) == 7
    assert not Job.objects.exists()
