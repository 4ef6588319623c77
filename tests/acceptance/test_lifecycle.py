"""How a job moves, with real worker processes: each schedule tick runs once whatever becomes of
its job, singleton jobs keep their place in line, a pause holds from the moment it commits, the
database's clock decides (workers under libfaketime), pruning never costs a lease, and the
signals reach receivers in the worker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.utils import timezone

from doctorjob import definitions, enqueue, enqueue_many
from doctorjob.models import Job, JobDefinition, JobExecution, QueueState, Status
from tests.testapp.jobs_lifecycle import LIFECYCLE, SIGNALS, lifecycle_jobs

from .helpers import holds_for, status_of, statuses, wait_for

on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs DATABASE_URL=postgres://...")
FAKETIME_LIBS = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))


@pytest.fixture
def lifecycle(monkeypatch):
    """The scheduled, singleton and failing jobs of tests/testapp/jobs_lifecycle.py, registered in
    the worker processes this test starts and in this process."""
    monkeypatch.setenv(LIFECYCLE, "1")  # worker_env() copies os.environ
    with lifecycle_jobs():
        yield


# -- schedules ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_tick_whose_job_is_gone_is_not_enqueued_again_when_workers_restart(workers, lifecycle):
    definitions.sync()  # synced two years ago: the latest yearly tick is due at once
    JobDefinition.objects.filter(name="lifecycle.yearly").update(scheduled_since=timezone.now() - timedelta(days=800))
    ticks = Job.objects.filter(name="lifecycle.yearly")
    first = workers("--queues", "lifecycle-ticks", "--poll-interval", "0.1")
    wait_for(lambda: ticks.filter(status=Status.SUCCEEDED).exists(), message=lambda: first.output())
    assert first.stop() == 0
    ticks.delete()  # pruned by retention, or deleted by someone

    second = workers("--queues", "lifecycle-ticks", "--poll-interval", "0.1")  # a deploy
    holds_for(lambda: not ticks.exists(), duration=2, message="no job for the tick that already ran")
    assert second.stop() == 0


# -- the claim ----------------------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor == "mysql", reason="MySQL/MariaDB cannot enforce singletons (doctorjob.W002)")
@pytest.mark.django_db(transaction=True)
def test_a_singleton_of_higher_priority_runs_before_a_backlog_of_ordinary_jobs(workers, lifecycle):
    backlog = enqueue_many([("tests.noop", {"n": i}) for i in range(300)])
    urgent = enqueue("lifecycle.urgent")
    worker = workers("--queues", "default,lifecycle", "--batch-size", "10", "--concurrency", "1")
    wait_for(
        lambda: not Job.objects.filter(status=Status.QUEUED).exists(),
        timeout=60,
        message=lambda: f"the backlog to drain: {statuses()}",
    )
    urgent.refresh_from_db()
    assert urgent.status == Status.SUCCEEDED
    before = Job.objects.filter(pk__in=[j.pk for j in backlog], started_at__lt=urgent.started_at).count()
    assert before == 0, f"{before} jobs of priority 0 started before the singleton of priority 100"
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_a_job_enqueued_with_the_pause_of_its_definition_or_queue_is_never_claimed(workers, tmp_path):
    definitions.sync()
    # Before the worker starts: on SQLite, a transaction that reads then writes fails at once
    # while another connection writes (the worker's chores at start-up).
    with transaction.atomic():
        JobDefinition.objects.filter(name="tests.noop").update(paused=True)
        by_name = enqueue("tests.noop")
    with transaction.atomic():
        QueueState.objects.update_or_create(name="paused-queue", defaults={"paused": True})
        by_queue = enqueue("tests.acceptance.touch", {"path": str(tmp_path / "touched")}, queue="paused-queue")
    worker = workers("--poll-interval", "0.05")
    holds_for(
        lambda: {status_of(by_name), status_of(by_queue)} == {Status.QUEUED},
        duration=2,
        message=lambda: (
            f"both jobs queued while paused: {status_of(by_name)}, {status_of(by_queue)}; "
            f"{list(JobDefinition.objects.filter(paused=True).values_list('name'))} "
            f"{list(QueueState.objects.filter(paused=True).values_list('name'))}\n"
            f"{worker.output()[-3000:]}"
        ),
    )

    JobDefinition.objects.filter(name="tests.noop").update(paused=False)
    QueueState.objects.filter(name="paused-queue").update(paused=False)
    wait_for(
        lambda: {status_of(by_name), status_of(by_queue)} == {Status.SUCCEEDED},
        message=lambda: f"both jobs to run once resumed: {statuses()}\n{worker.output()}",
    )
    assert worker.stop() == 0


# -- the database's clock -----------------------------------------------------------------------


def faketime(tmp_path: Path, offset: str) -> dict[str, str]:
    """The environment of a worker whose clock runs ``offset`` (``+5m``) from the real one.

    With Python 3.11, libfaketime would also shift the monotonic clock that ``Event.wait`` and
    timed lock waits use, blocking them for the whole offset; left unfaked, ``time.sleep`` then
    fails with EINVAL, so a ``sitecustomize`` makes it sleep with ``select()``."""
    if not FAKETIME_LIBS:
        pytest.fail("libfaketimeMT.so.1 is missing: apt-get install faketime (.ci/run does)")
    site = tmp_path / "faketime-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import select, time\n\n\n"
        "def _sleep(seconds):\n"
        "    if seconds > 0:\n"
        "        select.select([], [], [], seconds)\n\n\n"
        "time.sleep = _sleep\n"
    )
    from .helpers import worker_env

    path = worker_env()["PYTHONPATH"]
    return {
        "LD_PRELOAD": str(FAKETIME_LIBS[0]),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": f"{site}:{path}",
    }


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_clock_runs_ahead_runs_nothing_early_and_takes_over_no_live_lease(workers, tmp_path):
    delayed = enqueue("tests.noop", delay=60)
    live = Job.objects.create(
        name="tests.noop",
        status=Status.RUNNING,
        attempts=1,
        lease_id=uuid.uuid4(),
        worker="elsewhere:1:abc",
        started_at=timezone.now(),
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    ahead = workers("--lease", "3", "--poll-interval", "0.1", env=faketime(tmp_path, "+5m"))
    due = enqueue("tests.noop")
    wait_for(lambda: status_of(due) == Status.SUCCEEDED, message=lambda: ahead.output())

    def untouched() -> bool:
        live_now = Job.objects.get(pk=live.pk)
        return status_of(delayed) == Status.QUEUED and (live_now.status, live_now.lease_id) == (
            Status.RUNNING,
            live.lease_id,
        )

    holds_for(untouched, duration=3, message="the delayed job queued and the live lease its holder's")
    assert ahead.stop() == 0


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_clock_runs_behind_runs_due_jobs_at_once_and_keeps_its_leases(workers, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    # On time, and first: it holds the maintenance lease and sweeps what really expired.
    other = workers("--lease", "6", "--poll-interval", "0.1", "--queues", "elsewhere")
    behind = workers("--lease", "6", "--poll-interval", "0.1", env=faketime(tmp_path, "-5m"))
    due = enqueue("tests.noop")
    wait_for(
        lambda: status_of(due) == Status.SUCCEEDED,
        timeout=10,
        message=lambda: f"a due job to run on a worker 5 minutes behind:\n{behind.output()}",
    )

    blocking = enqueue("tests.block", {"started": str(started), "release": str(release)})
    wait_for(lambda: started.exists(), message=lambda: behind.output())
    claimed = Job.objects.get(pk=blocking.pk)
    holds_for(
        lambda: Job.objects.filter(pk=blocking.pk, lease_id=claimed.lease_id, attempts=1).exists(),
        duration=8,
        message="the job held by the worker behind, under its first lease",
    )
    release.touch()
    wait_for(lambda: status_of(blocking) == Status.SUCCEEDED, message=lambda: behind.output())
    assert list(JobExecution.objects.filter(job_id=blocking.pk).values_list("outcome", flat=True)) == ["succeeded"]
    assert [behind.stop(), other.stop()] == [0, 0]


# -- maintenance --------------------------------------------------------------------------------


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_pruning_200000_jobs_never_lets_a_running_jobs_lease_expire(workers, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    with connection.cursor() as cursor:  # succeeded 8 days ago: due for pruning at the first round
        cursor.execute(
            "INSERT INTO doctorjob_job (name, queue, payload, status, priority, run_at, attempts, max_attempts, "
            "created_at, finished_at, started_at, worker, error, traceback, version) "
            "SELECT 'tests.noop', 'default', jsonb_build_object('n', n, 'pad', repeat('x', 200)), 'succeeded', "
            "0, now() - interval '8 days', 1, 3, now() - interval '8 days', now() - interval '8 days', "
            "now() - interval '8 days', 'w', '', '', 1 FROM generate_series(1, 200000) AS n"
        )
    blocking = enqueue("tests.block", {"started": str(started), "release": str(release), "timeout": 120})
    # The worker claims the job and its maintenance thread starts pruning, both as it starts.
    worker = workers("--lease", "3", "--poll-interval", "0.1")
    wait_for(lambda: started.exists(), message=lambda: worker.output())

    def lease_live() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT lease_expires_at > statement_timestamp(), "
                "(SELECT count(*) FROM doctorjob_job WHERE status = 'succeeded') "
                "FROM doctorjob_job WHERE id = %s",
                [blocking.pk],
            )
            live, succeeded = cursor.fetchone()
        assert live, "the running job's lease expired while succeeded jobs were pruned"
        return succeeded == 0

    # Watch the lease until the table is empty.
    wait_for(lease_live, timeout=110, interval=0.1, message=lambda: f"pruning: {statuses()}\n{worker.output()}")
    release.touch()
    wait_for(lambda: status_of(blocking) == Status.SUCCEEDED, message=lambda: worker.output())
    assert Job.objects.get(pk=blocking.pk).attempts == 1
    assert "lease lost" not in worker.output()
    pruned = [line for line in worker.output().splitlines() if "pruned succeeded jobs count=200000" in line]
    assert pruned, worker.output()
    print(pruned[0])  # the pruning rate, for the docs
    assert worker.stop() == 0


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_receivers_in_the_worker_hear_each_start_and_each_committed_outcome_and_one_that_raises_changes_nothing(
    workers, lifecycle, tmp_path
):
    heard = tmp_path / "signals"
    ok = enqueue("tests.noop")
    failing = enqueue("lifecycle.fails")
    old = enqueue("issue4.versioned")
    Job.objects.filter(pk=old.pk).update(version=1)  # below the definition's min_version: skipped
    worker = workers("--queues", "default,lifecycle", "--burst", wait=False, env={SIGNALS: str(heard)})
    assert worker.wait(60) == 0, worker.output()

    lines = heard.read_text().splitlines()
    assert f"started {ok.pk} 1 Job" in lines
    assert f"finished {ok.pk} succeeded succeeded 1 " in lines
    assert f"started {failing.pk} 1 Job" in lines and f"started {failing.pk} 2 Job" in lines
    assert f"finished {failing.pk} retrying queued 1 RuntimeError: attempt 1 failed" in lines
    assert f"finished {failing.pk} dead dead 2 RuntimeError: attempt 2 failed" in lines
    assert (
        f"finished {old.pk} skipped skipped 1 version 1 of job 'issue4.versioned' is below its minimal "
        "supported version 2"
    ) in lines
    assert f"started {old.pk}" not in " ".join(lines)
    assert {status_of(ok), status_of(failing), status_of(old)} == {Status.SUCCEEDED, Status.DEAD, Status.SKIPPED}
    output = worker.output()
    assert "signal receiver" in output and f"RuntimeError: receiver broke on job {ok.pk}" in output
    assert "Traceback" in output


@pytest.mark.django_db(transaction=True)
def test_requeues_from_the_admin_never_fail_while_a_worker_writes(workers):
    """A requeue reads its dead letters, then writes: on SQLite with deferred transactions it
    failed at once with 'database is locked' whenever the worker was writing (doctorjob.W003)."""
    from doctorjob import operations
    from doctorjob.models import DeadLetter
    from tests.integration.factories import DeadLetterFactory

    letters = [DeadLetterFactory() for _ in range(50)]
    enqueue_many([("tests.noop", {"n": n}) for n in range(20000)])
    workers("--poll-interval", "0.05")
    wait_for(lambda: Job.objects.filter(status=Status.SUCCEEDED).exists())  # it is writing now
    for letter in letters:
        assert operations.requeue_matching(DeadLetter.objects.filter(pk=letter.pk)).changed == 1
    assert Job.objects.filter(status=Status.QUEUED, name="tests.noop").exists(), "the worker stopped writing"
