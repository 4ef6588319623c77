"""The state changes a worker writes, each fenced by the lease it claimed the job under, and the
maintenance chores that rescue and prune jobs."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from doctorjob import db, enqueue, enqueue_many, leases, maintenance
from doctorjob.leases import RELEASED, WORKER_LOST, Finish
from doctorjob.models import DeadLetter, Job, JobExecution, Status
from doctorjob.signals import DEAD, RETRYING, SKIPPED, SUCCEEDED

from .factories import DeadLetterFactory, JobFactory

pytestmark = pytest.mark.django_db

DB = "default"


def claim(worker: str = "worker-a", *, limit: int = 10, lease: float = 30, queues=None):
    return leases.claim(DB, worker=worker, limit=limit, lease=lease, queues=queues).jobs


def finish(*items: Finish) -> list[int]:
    """Record ``items``; the ids of the jobs whose outcome was ours to record."""
    return [f.job.id for f in leases.finish(DB, items)]


def sweep() -> tuple[list[Job], list[Job]]:
    """The maintenance sweep: (jobs queued again, jobs dead-lettered)."""
    done = maintenance.sweep_expired(DB)
    return [f.job for f in done if f.outcome == RETRYING], [f.job for f in done if f.outcome == DEAD]


def enqueue_many_noop(count: int) -> list[Job]:
    return enqueue_many([("tests.noop", {"n": i}) for i in range(count)])


def expire(*jobs) -> None:
    """Let the leases of ``jobs`` run out, as if their worker had stopped renewing them."""
    Job.objects.filter(pk__in=[j.id for j in jobs]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def take_over(job):
    """Simulate another worker rescuing ``job`` after its holder's lease ran out."""
    expire(job)
    requeued, dead = sweep()
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
    payloads = [
        {"text": "zoë ✓ 💡", "nested": {"list": [1, 2.5, None, True, "x"]}},
        ["a", {"b": []}],
        "a JSON string",
        12,
        1.5,
        False,
        {},
        {"escapes": 'quote " backslash \\ newline \n tab \t'},
    ]
    jobs = enqueue_many([("tests.noop", payload) for payload in payloads])
    claimed = {job.id: job.payload for job in claim(limit=len(payloads))}
    assert [claimed[job.pk] for job in jobs] == payloads


def test_the_payload_loader_reads_jsonb_from_bytes_and_memoryview_and_refuses_other_versions():
    psycopg = pytest.importorskip("psycopg")
    load = db._jsonb_loader()(3802).load  # 3802: jsonb
    document = b'\x01{"text": "zo\xc3\xab", "n": [1, 2.5, null]}'
    assert load(document) == load(memoryview(document)) == {"text": "zoë", "n": [1, 2.5, None]}
    with pytest.raises(psycopg.DataError, match="unknown jsonb binary format: 2"):
        load(b"\x02{}")


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
    explain = "EXPLAIN " + leases._CLAIM.format(filters="")
    params = [[], 100, uuid.uuid4(), "w", 30.0]

    def plan(**planner) -> str:
        return "\n".join(row[0] for row in db.execute(connection, explain, params, **planner))

    guided = plan(planner=leases._CLAIM_PLANNER)
    assert "Index Scan using doctorjob_job_claim_any" in guided and "Sort" not in guided
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_sort'), current_setting('enable_bitmapscan')")
        assert cursor.fetchone() == ("on", "on"), "the settings lasted for the claim only"
    with transaction.atomic():  # there they would last until the block ends: not applied
        plan(planner=leases._CLAIM_PLANNER)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('enable_sort')")
            assert cursor.fetchone() == ("on",)


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


def test_renew_counts_from_the_databases_clock():
    enqueue("tests.noop")
    (job,) = claim(lease=5)
    leases.renew(DB, [job], 300)
    now = db.database_now(connection)
    deadline = Job.objects.get(pk=job.id).lease_expires_at
    assert now + timedelta(seconds=299) <= deadline <= now + timedelta(seconds=300)


# -- finish -------------------------------------------------------------------------------------


def test_finish_records_many_successes_at_once():
    enqueue_many_noop(3)
    jobs = claim()
    before = db.database_now(connection)
    ours = finish(*[Finish(j, SUCCEEDED, {"i": i}, duration=0.5, worker="worker-a") for i, j in enumerate(jobs)])
    assert sorted(ours) == sorted(j.id for j in jobs)
    rows = Job.objects.in_bulk([j.id for j in jobs])
    for i, j in enumerate(jobs):
        row = rows[j.id]
        assert (row.status, row.result, row.lease_expires_at) == (Status.SUCCEEDED, {"i": i}, None)
        assert before <= row.finished_at <= db.database_now(connection)
        assert (j.status, j.result, j.finished_at) == (Status.SUCCEEDED, {"i": i}, row.finished_at)
    executions = JobExecution.objects.filter(job_id__in=[j.id for j in jobs])
    assert (
        sorted(executions.values_list("outcome", "worker", "attempt", "duration"))
        == [("succeeded", "worker-a", 1, timedelta(seconds=0.5))] * 3
    )


def test_finish_by_a_worker_whose_lease_was_taken_over_changes_nothing():
    enqueue_many_noop(2)
    old, other = claim(lease=5)
    new = take_over(old)
    assert finish(
        Finish(old, SUCCEEDED, "late"),
        Finish(other, SUCCEEDED, "ok"),
        Finish(old, DEAD, error="x"),
        Finish(old, RETRYING, error="x"),
        Finish(old, SKIPPED, error="x"),
    ) == [other.id]
    row = Job.objects.get(pk=old.id)
    assert (row.status, row.lease_id, row.worker, row.result) == (Status.RUNNING, new.lease_id, "worker-b", None)
    assert Job.objects.get(pk=other.id).status == Status.SUCCEEDED
    assert not DeadLetter.objects.exists()
    assert list(JobExecution.objects.exclude(outcome="lost").values_list("job_id", flat=True)) == [other.id]


def test_a_retry_is_queued_again_after_its_delay_by_the_databases_clock_keeping_the_error():
    job = enqueue("tests.noop")
    (claimed,) = claim()
    before = db.database_now(connection)
    assert finish(Finish(claimed, RETRYING, error="RuntimeError: boom", traceback="Traceback...", delay=300))
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempts, row.error, row.traceback) == (
        Status.QUEUED,
        1,
        "RuntimeError: boom",
        "Traceback...",
    )
    assert (row.lease_id, row.worker, row.lease_expires_at) == (None, "", None)
    assert before + timedelta(seconds=300) <= row.run_at <= db.database_now(connection) + timedelta(seconds=300)
    assert (claimed.status, claimed.run_at) == (Status.QUEUED, row.run_at)
    assert JobExecution.objects.get().outcome == "failed"
    assert claim() == []


def test_a_dead_job_gets_its_dead_letter_in_the_same_write():
    job = enqueue("tests.noop", {"n": 1}, key="k", queue="q", priority=3, max_attempts=2)
    (claimed,) = claim()
    assert finish(Finish(claimed, DEAD, error="PermanentError: no", traceback="Traceback..."))
    row = Job.objects.get(pk=job.pk)
    letter = DeadLetter.objects.get()
    assert (row.status, row.error, row.traceback) == (Status.DEAD, "PermanentError: no", "Traceback...")
    assert (letter.job_id, letter.name, letter.queue, letter.payload, letter.priority) == (
        job.pk,
        "tests.noop",
        "q",
        {"n": 1},
        3,
    )
    assert (letter.attempts, letter.max_attempts, letter.key, letter.error, letter.traceback) == (
        1,
        2,
        "k",
        "PermanentError: no",
        "Traceback...",
    )
    assert letter.created_at == row.finished_at
    assert letter.requeued_at is None


def test_a_job_is_not_marked_dead_when_its_dead_letter_cannot_be_written(monkeypatch):
    job = enqueue("tests.noop")
    (claimed,) = claim()
    if connection.vendor == "postgresql":  # one statement: make the database refuse the dead letter
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE doctorjob_deadletter ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    else:

        class Refused:
            def __init__(self, **fields):
                pass

            class objects:
                @staticmethod
                def using(alias):
                    raise IntegrityError("dead letter refused")

        monkeypatch.setattr(leases, "DeadLetter", Refused)
    with pytest.raises(IntegrityError), transaction.atomic():
        finish(Finish(claimed, DEAD, error="boom"))
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.lease_id, row.error) == (Status.RUNNING, claimed.lease_id, "")


def test_a_skipped_job_is_recorded_skipped_with_its_reason():
    job = enqueue("tests.noop")
    (claimed,) = claim()
    assert finish(Finish(claimed, SKIPPED, error="version 1 is below 2", worker="worker-a"))
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.error, row.lease_expires_at) == (Status.SKIPPED, "version 1 is below 2", None)
    assert JobExecution.objects.get().outcome == "skipped"


def test_release_returns_jobs_to_the_queue_without_counting_the_attempt():
    enqueue_many_noop(2)
    jobs = claim()
    assert len(finish(*[Finish(j, RELEASED) for j in jobs])) == 2
    for row in Job.objects.all():
        assert (row.status, row.attempts, row.lease_id, row.worker, row.lease_expires_at, row.started_at) == (
            Status.QUEUED,
            0,
            None,
            "",
            None,
            None,
        )
    assert not JobExecution.objects.exists()
    assert len(claim()) == 2, "released jobs can be claimed again at once"


# -- the sweep ----------------------------------------------------------------------------------


def test_sweep_requeues_jobs_whose_lease_ran_out_counting_the_attempt():
    job = enqueue("tests.noop", max_attempts=3)
    (claimed,) = claim(worker="crashed")
    expire(claimed)
    requeued, dead = sweep()
    assert [j.id for j in requeued] == [job.pk] and dead == []
    row = Job.objects.get(pk=job.pk)
    assert (row.status, row.attempts, row.error, row.lease_id, row.worker) == (Status.QUEUED, 1, WORKER_LOST, None, "")
    execution = JobExecution.objects.get()
    assert (execution.outcome, execution.worker, execution.error) == ("lost", "crashed", WORKER_LOST)
    (again,) = claim()
    assert again.attempts == 2


def test_sweep_dead_letters_expired_jobs_without_attempts_left():
    job = enqueue("tests.noop", {"n": 1}, max_attempts=1)
    (claimed,) = claim()
    expire(claimed)
    requeued, dead = sweep()
    assert requeued == [] and [j.id for j in dead] == [job.pk]
    assert Job.objects.get(pk=job.pk).status == Status.DEAD
    letter = DeadLetter.objects.get()
    assert (letter.job_id, letter.payload, letter.attempts, letter.error) == (job.pk, {"n": 1}, 1, WORKER_LOST)


def test_sweep_leaves_live_leases_alone():
    JobFactory(running=True)
    assert sweep() == ([], [])
    assert Job.objects.get().status == Status.RUNNING


@pytest.mark.parametrize("max_attempts", [3, 1], ids=["requeue", "dead-letter"])
def test_sweep_does_not_touch_a_job_whose_lease_was_renewed_meanwhile(max_attempts):
    enqueue("tests.noop", max_attempts=max_attempts)
    (claimed,) = claim()
    expire(claimed)
    (lost,) = leases.expired(DB)
    leases.renew(DB, [claimed], 30)  # the holder renews just after the sweep read
    assert finish(Finish(lost, RETRYING if max_attempts > 1 else DEAD, error=WORKER_LOST, expired=True)) == []
    row = Job.objects.get(pk=claimed.id)
    assert (row.status, row.lease_id) == (Status.RUNNING, claimed.lease_id)
    assert not DeadLetter.objects.exists() and not JobExecution.objects.exists()


# -- pruning ------------------------------------------------------------------------------------


def test_prune_deletes_only_succeeded_jobs_older_than_the_retention():
    long_ago = timezone.now() - timedelta(days=8)
    old = JobFactory(succeeded=True, finished_at=long_ago)
    JobExecution.objects.create(job=old, outcome="succeeded")
    recent = JobFactory(succeeded=True, finished_at=timezone.now() - timedelta(days=6))
    dead = JobFactory(dead=True, finished_at=long_ago)
    cancelled = JobFactory(cancelled=True, finished_at=long_ago)
    queued = JobFactory(created_at=long_ago, run_at=long_ago)
    retried = JobFactory(finished_at=long_ago)  # queued for a retry; a retry sets finished_at
    letter = DeadLetterFactory(job=dead)
    assert maintenance.prune_succeeded(DB, timedelta(days=7)) == (1, False)
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, dead.pk, cancelled.pk, queued.pk, retried.pk}
    assert not JobExecution.objects.exists()
    assert DeadLetter.objects.get().pk == letter.pk


def test_prune_keeps_a_dead_letter_whose_job_or_requeued_job_is_pruned():
    letter = DeadLetterFactory(requeued=True, payload={"n": 1})
    retried = DeadLetterFactory(payload={"n": 2})  # its job was retried in place, and succeeded
    DeadLetter.objects.filter(pk=retried.pk).update(requeued_job_id=retried.job_id, requeued_at=timezone.now())
    Job.objects.filter(pk__in=[letter.requeued_job_id, retried.job_id]).update(
        status=Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=30)
    )
    assert maintenance.prune_succeeded(DB, timedelta(days=7)) == (2, False)
    letter.refresh_from_db()
    retried.refresh_from_db()
    assert (letter.requeued_job_id, retried.job_id, retried.requeued_job_id) == (None, None, None)
    assert letter.requeued_at is not None
    assert (letter.name, letter.payload, letter.error) == ("tests.noop", {"n": 1}, "RuntimeError: boom")


def test_prune_works_through_more_jobs_than_one_batch():
    long_ago = timezone.now() - timedelta(days=8)
    JobFactory.create_batch(7, succeeded=True, finished_at=long_ago)
    assert maintenance.prune_succeeded(DB, timedelta(days=7), batch=3) == (7, False)
    assert not Job.objects.exists()


def test_prune_stops_after_its_time_budget_saying_that_rows_are_left():
    long_ago = timezone.now() - timedelta(days=8)
    JobFactory.create_batch(7, succeeded=True, finished_at=long_ago)
    assert maintenance.prune_succeeded(DB, timedelta(days=7), batch=3, budget=0) == (3, True)
    assert maintenance.prune_succeeded(DB, timedelta(days=7), batch=3) == (4, False)


def test_prune_stops_between_batches_when_the_worker_stops():
    long_ago = timezone.now() - timedelta(days=8)
    JobFactory.create_batch(7, succeeded=True, finished_at=long_ago)
    stopping = threading.Event()
    stopping.set()
    assert maintenance.prune_succeeded(DB, timedelta(days=7), batch=3, stopping=stopping) == (3, True)
    assert Job.objects.count() == 4


# -- the maintenance lease ------------------------------------------------------------------------


def test_one_worker_at_a_time_holds_the_maintenance_lease_until_it_runs_out_or_is_given_up():
    assert maintenance.elect(DB, "a", 30)
    assert not maintenance.elect(DB, "b", 30)
    assert maintenance.elect(DB, "a", 30), "the holder renews it"
    maintenance.resign(DB, "a")
    assert maintenance.elect(DB, "b", 30)
    from doctorjob.models import MaintenanceLease

    MaintenanceLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # b stalled
    assert maintenance.elect(DB, "c", 30)
    assert not maintenance.elect(DB, "b", 30)


def test_a_job_rescued_by_the_sweep_keeps_its_place_in_line():
    first = enqueue("tests.noop")
    (claimed,) = claim()
    second = enqueue("tests.noop")
    expire(claimed)
    sweep()
    assert Job.objects.get(pk=first.pk).run_at == first.run_at
    assert [j.id for j in claim(limit=1)] == [first.pk]
    assert [j.id for j in claim(limit=1)] == [second.pk]


def test_a_worker_without_the_maintenance_lease_waits_for_its_next_try_instead_of_spinning():
    import time

    assert maintenance.elect(DB, "holder", 30)
    other = maintenance.Maintenance(DB, "other", 30, threading.Event(), lambda finished: None)
    other.run_due()
    assert not other.leader
    assert other.next_due() >= time.monotonic() + 9  # a third of its lease


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_after_a_prune_the_tables_are_vacuumed_when_and_only_when_the_server_has_no_autovacuum():
    """Jobs are written several times and deleted: without autovacuum, the dead rows would make
    the tables grow for ever (measured: 5.7 MiB a minute at 300 jobs/s), whatever pruning does."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('autovacuum') = 'off'")
        autovacuum_off = cursor.fetchone()[0]

    def vacuums() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'doctorjob_job'")
            return cursor.fetchone()[0]

    before = vacuums()
    JobFactory(succeeded=True, finished_at=timezone.now() - timedelta(days=8))
    keeper = maintenance.Maintenance(DB, "test", 30.0, threading.Event(), lambda finished: None)
    keeper._prune()
    assert vacuums() == before + autovacuum_off
    assert (maintenance.vacuum_if_autovacuum_is_off(DB) is None) is not autovacuum_off
