"""A worker killed with SIGKILL loses no job. Its watchdog charges an attempt to the jobs it
was running and returns the rest at once; when the watchdog is gone too (the host went down),
another worker's lease sweep takes the jobs over. A worker that was only paused past its lease
finds its job taken over and changes nothing."""

from __future__ import annotations

import pytest

from doctorjob import enqueue
from doctorjob.models import DeadLetter, Job, JobExecution, Outcome, Status, Worker
from tests.testapp.models import Effect, Run

from .helpers import pause, resume, status_of, statuses, wait_for, write_atomically

# Short leases so that recovery takes seconds: the killed worker's lease runs out after at
# most 3 s, and the rescuing worker sweeps at start and then every 3 s.
WORKER = ("--lease", "3", "--poll-interval", "0.1")
RECOVERY = 20.0


def read(path) -> str:
    """The text of a file a handler writes, once it is there."""
    return path.exists() and path.read_text()


@pytest.mark.django_db(transaction=True)
def test_job_of_a_lost_host_runs_to_success_exactly_once_more(workers, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    job = enqueue("tests.block", {"started": str(started), "release": str(release)})
    first = workers(*WORKER)
    assert wait_for(lambda: read(started), message="the job to start") == f"{first.pid} 1"

    first.kill(watchdog=True)  # the host goes down: the lease sweep rescues the job
    started.unlink()
    second = workers(*WORKER)

    assert (
        wait_for(
            lambda: read(started), timeout=RECOVERY, message=lambda: f"another attempt to start:\n{second.output()}"
        )
        == f"{second.pid} 2"
    )
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.RUNNING, 2)  # the lost attempt counts
    assert "worker lost" in job.error
    assert f"retrying job_id={job.pk} name=tests.block attempt=1" in second.output()

    release.touch()
    wait_for(lambda: status_of(job) == Status.SUCCEEDED, message="the job to succeed")
    # tests.block writes one Run row per finished attempt: job_id * 100 + attempt.
    assert list(
        Run.objects.filter(job_id__gte=job.pk * 100, job_id__lt=job.pk * 100 + 100).values_list("job_id", flat=True)
    ) == [job.pk * 100 + 2]
    assert not DeadLetter.objects.exists()
    assert second.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_job_of_a_lost_host_with_no_attempt_left_becomes_a_dead_letter(workers, tmp_path):
    started = tmp_path / "started"
    job = enqueue("tests.block", {"started": str(started)}, max_attempts=1)
    first = workers(*WORKER)
    wait_for(lambda: read(started), message="the job to start")

    first.kill(watchdog=True)  # the host goes down: the lease sweep rescues the job
    second = workers(*WORKER)

    wait_for(
        lambda: status_of(job) == Status.DEAD,
        timeout=RECOVERY,
        message=lambda: f"the job to be dead-lettered:\n{second.output()}",
    )
    letter = DeadLetter.objects.get(job_id=job.pk)
    assert "worker lost" in letter.error
    assert (letter.name, letter.attempts) == ("tests.block", 1)
    assert "worker lost" in Job.objects.get(pk=job.pk).error
    assert read(started) == f"{first.pid} 1"  # never started again
    assert not Run.objects.exists()
    assert second.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_atomic_job_of_a_lost_host_killed_after_its_write_leaves_exactly_one_write_once_recovered(workers, tmp_path):
    crash = tmp_path / "crash"
    job = enqueue("tests.atomic_write", {"crash_file": str(crash)})
    first = workers(*WORKER)
    # tests.atomic_write wrote its Effect row, then the crash file, and now sleeps: kill it there.
    wait_for(lambda: read(crash), message="the handler to write and wait")
    assert not Effect.objects.filter(job_id=job.pk).exists()  # written, not committed

    first.kill(watchdog=True)  # the host goes down: the lease sweep rescues the job
    assert not Effect.objects.filter(job_id=job.pk).exists()  # and never will be
    second = workers(*WORKER)

    wait_for(
        lambda: status_of(job) == Status.SUCCEEDED,
        timeout=RECOVERY,
        message=lambda: f"the job to be recovered and succeed:\n{second.output()}",
    )
    assert Effect.objects.filter(job_id=job.pk).count() == 1
    job.refresh_from_db()
    assert (job.attempts, job.result) == (2, "written")
    assert second.stop() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("late_attempt", ["succeeds", "fails"])
def test_worker_paused_past_its_lease_cannot_overwrite_the_attempt_that_replaced_it(workers, tmp_path, late_attempt):
    job = enqueue("tests.acceptance.per_attempt", {"dir": str(tmp_path)})
    first = workers(*WORKER)
    wait_for(lambda: read(tmp_path / "started.1"), message="attempt 1 to start")
    pause(first)  # SIGSTOP: no renewals, so its lease runs out, but the process lives on

    second = workers(*WORKER)
    wait_for(
        lambda: read(tmp_path / "started.2"),
        timeout=RECOVERY,
        message=lambda: f"attempt 2 to start:\n{second.output()}",
    )
    taken_over = Job.objects.get(pk=job.pk)
    assert (taken_over.status, taken_over.attempts) == (Status.RUNNING, 2)

    # The paused worker wakes up and finishes attempt 1 late, while attempt 2 is running.
    write_atomically(tmp_path / "release.1", "ok" if late_attempt == "succeeds" else "fail")
    resume(first)

    def late_outcome_handled() -> bool:
        # A refused success is logged as a lost lease; a refused retry leaves only a history row.
        return (
            f"lease lost job_id={job.pk} " in first.output()
            or JobExecution.objects.filter(job_id=job.pk, attempt=1, outcome=Outcome.FAILED).exists()
        )

    wait_for(late_outcome_handled, message=lambda: f"the late worker to be done with attempt 1:\n{first.output()}")
    now = Job.objects.get(pk=job.pk)
    assert (now.status, now.attempts, now.lease_id, now.worker) == (
        Status.RUNNING,
        2,
        taken_over.lease_id,
        taken_over.worker,
    )
    # atomic=True: the late attempt's write was rolled back with its refused success.
    assert not Run.objects.filter(job_id=job.pk * 100 + 1).exists()

    write_atomically(tmp_path / "release.2", "ok")
    wait_for(lambda: status_of(job) == Status.SUCCEEDED, message="attempt 2 to succeed")
    job.refresh_from_db()
    assert (job.attempts, job.result) == (2, {"attempt": 2})
    assert list(Run.objects.values_list("job_id", flat=True)) == [job.pk * 100 + 2]
    assert f"succeeded job_id={job.pk} name=tests.acceptance.per_attempt attempt=1" not in first.output()
    assert [first.stop(), second.stop()] == [0, 0]


@pytest.mark.django_db(transaction=True)
def test_a_job_that_kills_its_worker_alone_pays_for_it_and_is_dead_lettered_after_its_attempts(workers, tmp_path):
    """One job ends its worker's process every time it runs, in a batch of ten innocent jobs
    that the one handler thread had not started: each crash costs an attempt to the killer
    alone, the others come back at once with their attempts unchanged, and after its three
    attempts the killer is dead-lettered, saying the worker was lost while running it."""
    killer = enqueue("tests.acceptance.kills_its_worker", {"dir": str(tmp_path)}, priority=10)
    innocents = [
        enqueue("tests.acceptance.touch", {"path": str(tmp_path / f"innocent.{i}")}, max_attempts=1) for i in range(10)
    ]
    # A lease far longer than the test: what comes back, comes back without waiting for it.
    options = ("--concurrency", "1", "--batch-size", "20", "--lease", "300", "--poll-interval", "0.1")
    for attempt in (1, 2, 3):
        worker = workers(*options)
        assert worker.wait(timeout=30) == 70, worker.output()
        assert read(tmp_path / f"started.{attempt}") == str(worker.pid)
        wait_for(
            lambda: not Job.objects.filter(status=Status.RUNNING).exists(),
            message=lambda: f"the dead worker's jobs to come back: {statuses()}\n{worker.output()}",
        )
        stored = Job.objects.get(pk=killer.pk)
        assert stored.attempts == attempt and stored.error.startswith("worker lost while running"), stored.error
        assert set(Job.objects.filter(pk__in=[j.pk for j in innocents]).values_list("status", "attempts")) == {
            (Status.QUEUED, 0)
        }
    assert status_of(killer) == Status.DEAD
    letter = DeadLetter.objects.get(job_id=killer.pk)
    assert letter.attempts == 3 and letter.error.startswith("worker lost while running"), letter.error
    assert list(JobExecution.objects.filter(job_id=killer.pk).values_list("attempt", "outcome")) == [
        (1, Outcome.LOST),
        (2, Outcome.LOST),
        (3, Outcome.LOST),
    ]

    last = workers(*options, "--burst")
    assert last.wait(timeout=30) == 0, last.output()
    assert set(Job.objects.filter(pk__in=[j.pk for j in innocents]).values_list("status", "attempts")) == {
        (Status.SUCCEEDED, 1)
    }
    assert JobExecution.objects.filter(job_id__in=[j.pk for j in innocents]).count() == 10
    assert not (tmp_path / "started.4").exists()


@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_worker_costs_an_attempt_to_its_running_job_alone_and_returns_the_rest_at_once(workers, tmp_path):
    """SIGKILL from outside (the OOM killer): the watchdog finishes the running job as lost,
    and returns the jobs the worker had claimed but not started, long before any lease ran out."""
    started = tmp_path / "started"
    running = enqueue("tests.block", {"started": str(started)}, priority=10, max_attempts=2)
    waiting = [enqueue("tests.noop", {"i": i}, max_attempts=1) for i in range(5)]
    first = workers("--concurrency", "1", "--lease", "300", "--poll-interval", "0.1")
    wait_for(lambda: read(started), message="the job to start")
    assert set(Job.objects.values_list("status", flat=True)) == {Status.RUNNING}  # all six claimed

    first.kill()
    wait_for(
        lambda: not Job.objects.filter(status=Status.RUNNING).exists(),
        message=lambda: f"the watchdog to return the jobs: {statuses()}\n{first.output()}",
    )
    job = Job.objects.get(pk=running.pk)
    assert (job.status, job.attempts, job.lease_id) == (Status.QUEUED, 1, None)
    assert job.error.startswith("worker lost while running this job")
    assert list(JobExecution.objects.values_list("job_id", "attempt", "outcome")) == [(job.pk, 1, Outcome.LOST)]
    assert set(Job.objects.filter(pk__in=[j.pk for j in waiting]).values_list("status", "attempts", "error")) == {
        (Status.QUEUED, 0, "")
    }
    assert "charged an attempt" in first.output()
    assert Worker.objects.get(pid=first.pid).lost
