"""Several real worker processes: each tick of a schedule enqueued once, singleton and per-key
jobs never running twice at once while other keys run in parallel, a SIGKILLed worker leaving no
lock behind, and the Worker row of a process."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.utils import timezone

from doctorjob import enqueue, enqueue_many
from doctorjob.models import Job, JobExecution, Outcome, Status, Worker
from tests.testapp.jobs_issue4 import EXTRA, extra_jobs

from .helpers import status_of, statuses, wait_for

# MySQL and MariaDB have no partial unique indexes, so nothing stops two running jobs with one key.
needs_partial_unique_index = pytest.mark.skipif(
    connection.vendor == "mysql",
    reason="MySQL/MariaDB cannot enforce singleton/concurrency_key (no partial unique index; doctorjob.W002)",
)

WORKERS = 3


@pytest.fixture
def extra(monkeypatch):
    """The scheduled, singleton and per-tenant jobs of tests/testapp/jobs_issue4.py: registered
    in the worker processes started by this test and, for enqueue(), in this process."""
    monkeypatch.setenv(EXTRA, "1")  # worker_env() copies os.environ
    with extra_jobs():
        yield


@dataclass(frozen=True)
class Run:
    """One handler run, as record_interval() logged it."""

    key: str
    job_id: int
    attempt: int
    pid: int
    start: float
    end: float

    def overlaps(self, other: Run) -> bool:
        return self.start < other.end and other.start < self.end


def runs(log: Path) -> list[Run]:
    if not log.exists():
        return []
    return [
        Run(key, int(job_id), int(attempt), int(pid), float(start), float(end))
        for key, job_id, attempt, pid, start, end in (line.split() for line in log.read_text().splitlines())
    ]


def read(path: Path) -> str:
    return path.exists() and path.read_text()


# -- schedules ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_several_workers_enqueue_each_tick_of_a_schedule_once(workers, extra):
    # Started one after another: see test_workers_starting_together_all_run on SQLite.
    pool = [workers("--queues", "issue4-ticks", "--poll-interval", "0.1") for _ in range(WORKERS)]
    all_running = timezone.now()
    ticks = Job.objects.filter(name="issue4.every_second")

    wait_for(
        lambda: ticks.filter(created_at__gte=all_running).count() >= 3,
        timeout=15,
        message=lambda: f"3 ticks enqueued while {WORKERS} workers run: {statuses()}\n{pool[0].output()}",
    )
    assert Worker.objects.count() == WORKERS
    assert [worker.stop() for worker in pool] == [0] * WORKERS

    keys = list(ticks.values_list("key", flat=True))
    prefix = "schedule:issue4.every_second:"
    assert all(re.fullmatch(re.escape(prefix) + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", key) for key in keys), keys
    seconds = [datetime.fromisoformat(key.removeprefix(prefix)) for key in keys]
    assert len(set(seconds)) == len(keys), f"two jobs for one tick: {sorted(keys)}"
    for worker in pool:
        assert "Traceback" not in worker.output(), worker.output()


# -- jobs that must not overlap -----------------------------------------------------------------


@needs_partial_unique_index
@pytest.mark.django_db(transaction=True)
def test_singleton_and_per_key_jobs_never_overlap_across_workers_and_other_keys_run_in_parallel(
    workers, extra, tmp_path
):
    log = tmp_path / "runs"
    # One handler thread and one job per claim each: a worker holds at most two keys at a time,
    # so the four keys below have to be shared between the workers.
    pool = [
        workers("--queues", "issue4-overlap", "--concurrency", "1", "--batch-size", "1", "--poll-interval", "0.05")
        for _ in range(WORKERS)
    ]
    with transaction.atomic():
        jobs = enqueue_many(
            [("issue4.singleton", {"log": str(log), "seconds": 0.1})] * 6
            + [
                ("issue4.per_tenant", {"log": str(log), "tenant": tenant, "seconds": 0.2})
                for tenant in ("a", "b", "c")
                for _ in range(3)
            ]
        )

    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == len(jobs),
        timeout=30,
        message=lambda: f"the jobs to succeed: {statuses()}\n{pool[0].output()[-3000:]}",
    )
    assert [worker.stop() for worker in pool] == [0] * WORKERS

    done = runs(log)
    assert sorted(run.job_id for run in done) == sorted(job.pk for job in jobs)  # each ran once
    for key in {run.key for run in done}:
        same_key = sorted((run for run in done if run.key == key), key=lambda run: run.start)
        for before, after in zip(same_key, same_key[1:]):
            assert after.start >= before.end, f"{key}: job {after.job_id} started before job {before.job_id} ended"
    assert any(a.key != b.key and a.overlaps(b) for a, b in combinations(done, 2)), "different keys never ran at once"
    assert len({run.pid for run in done}) > 1, "one worker ran every job: the workers did not compete"


@needs_partial_unique_index
@pytest.mark.django_db(transaction=True)
def test_a_singleton_held_by_a_sigkilled_worker_is_free_again_once_its_lease_expires(workers, extra, tmp_path):
    log, started, release = tmp_path / "runs", tmp_path / "started", tmp_path / "release"
    options = ("--queues", "issue4-overlap", "--lease", "3", "--poll-interval", "0.1")
    held = enqueue("issue4.singleton", {"log": str(log), "started": str(started), "release": str(release)})
    first = workers(*options)
    assert wait_for(lambda: read(started), message="the singleton to start") == f"{first.pid} 1"
    waiting = enqueue("issue4.singleton", {"log": str(log)})
    first_name = Worker.objects.get(pid=first.pid, host=socket.gethostname()).name
    if connection.vendor == "postgresql":  # the running row is the lock, not a session's lock
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert cursor.fetchone() == (0,)
    assert status_of(waiting) == Status.QUEUED

    first.kill(watchdog=True)  # the host goes down: the key is freed when the lease runs out
    release.touch()  # the next attempt of `held` returns at once
    second = workers(*options)

    wait_for(
        lambda: {status_of(held), status_of(waiting)} == {Status.SUCCEEDED},
        timeout=20,
        message=lambda: f"both singletons to succeed: {statuses()}\n{second.output()}",
    )
    second_name = Worker.objects.get(pid=second.pid, host=socket.gethostname()).name
    lost, succeeded = JobExecution.objects.filter(job_id=held.pk).order_by("attempt")
    assert (lost.attempt, lost.outcome, lost.worker) == (1, Outcome.LOST, first_name)
    assert (succeeded.attempt, succeeded.outcome, succeeded.worker) == (2, Outcome.SUCCEEDED, second_name)
    # The waiting job started only once the sweep freed the key, and after `held` had finished.
    assert Job.objects.get(pk=waiting.pk).started_at >= lost.finished_at
    [held_run, waiting_run] = sorted(runs(log), key=lambda run: run.start)
    assert (held_run.job_id, held_run.attempt, waiting_run.job_id) == (held.pk, 2, waiting.pk)
    assert waiting_run.start >= held_run.end
    assert Worker.objects.filter(name=first_name).exists()  # a killed worker cannot remove its row
    assert second.stop() == 0


# -- worker rows --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_has_a_row_it_heartbeats_and_removes_when_stopped(workers):
    worker = workers("--queues", "issue4,default", "--concurrency", "2", "--lease", "3", "--poll-interval", "0.1")
    row = Worker.objects.get(pid=worker.pid, host=socket.gethostname())
    assert (row.queues, row.concurrency, row.lease, row.lost) == ("issue4,default", 2, 3.0, False)
    job = enqueue("tests.noop")

    wait_for(
        lambda: Worker.objects.get(pk=row.pk).last_heartbeat > row.last_heartbeat,
        timeout=5,
        message="a heartbeat (every third of the 3 s lease)",
    )
    wait_for(lambda: status_of(job) == Status.SUCCEEDED, message="the job to succeed")
    assert worker.stop() == 0

    assert not Worker.objects.filter(pk=row.pk).exists()
    assert list(JobExecution.objects.filter(job_id=job.pk).values_list("worker", "outcome")) == [
        (row.name, Outcome.SUCCEEDED)
    ]
