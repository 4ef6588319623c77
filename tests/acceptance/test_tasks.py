"""Django tasks (Django 6) run by real ``run_jobs`` processes: beside doctorjob's own jobs, in
priority order, RUNNING while they run, a crash or SystemExit costing one attempt, never run
before the enqueuing transaction commits, and Django's task signals sent by the worker."""

from __future__ import annotations

import django
import pytest

if django.VERSION < (6, 0):
    pytest.skip("django.tasks needs Django 6", allow_module_level=True)

import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from django.db import transaction  # noqa: E402
from django.tasks import TaskResultStatus, task_backends  # noqa: E402

from doctorjob import enqueue  # noqa: E402
from doctorjob.models import Job, Status  # noqa: E402
from tests.testapp import tasks  # noqa: E402
from tests.testapp.tasks import TASK_SIGNALS  # noqa: E402

from .helpers import WorkerProcess, holds_for, statuses, wait_for  # noqa: E402


def result_of(enqueued: Any, backend: str = "default") -> Any:
    return task_backends[backend].get_result(enqueued.id)


def finished(*enqueued: Any, backend: str = "default") -> bool:
    return all(result_of(r, backend).is_finished for r in enqueued)


def worker_id(worker: WorkerProcess) -> str:
    found = re.search(r"worker started worker=(\S+)", worker.output())
    assert found, worker.output()
    return found[1]


@pytest.mark.django_db(transaction=True)
def test_run_jobs_runs_tasks_beside_jobs_and_sends_the_task_signals(workers, tmp_path: Path, monkeypatch):
    signals = tmp_path / "signals.log"
    monkeypatch.setenv(TASK_SIGNALS, str(signals))  # worker_env() copies os.environ
    job = enqueue("tests.noop", {})
    added, urgent, doubled = tasks.add.enqueue(2, 3), tasks.urgent.enqueue(7), tasks.double_later.enqueue(4)
    context, failed = tasks.attempts.enqueue(), tasks.fails.enqueue()
    worker = workers("--poll-interval", "0.1")
    wait_for(lambda: finished(added, urgent, doubled, context, failed), message=lambda: worker.output())
    wait_for(lambda: Job.objects.get(pk=job.pk).status == Status.SUCCEEDED, message=statuses)
    me = worker_id(worker)

    result = result_of(added)
    assert (result.status, result.return_value, result.worker_ids, result.errors) == ("SUCCESSFUL", 5, [me], [])
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert (result_of(urgent).return_value, result_of(doubled).return_value) == (7, 8)
    assert result_of(context).return_value == {"attempt": 1, "id": context.id, "worker_ids": [me], "status": "RUNNING"}
    assert [e.exception_class_path for e in result_of(failed).errors] == ["tests.testapp.tasks.TaskBroke"]

    wait_for(lambda: signals.exists() and len(signals.read_text().splitlines()) == 10, message=lambda: worker.output())
    lines = set(signals.read_text().splitlines())
    for enqueued in (added, urgent, doubled, context):
        assert f"started {enqueued.id} 1 RUNNING DoctorJobBackend" in lines
        assert f"finished {enqueued.id} SUCCESSFUL 1 0 DoctorJobBackend" in lines
    assert f"finished {failed.id} FAILED 1 1 DoctorJobBackend" in lines
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_a_running_task_is_running_and_system_exit_fails_only_its_own_run(workers, tmp_path: Path):
    release = tmp_path / "release"
    waiting = tasks.waits_for.enqueue(str(release))
    worker = workers("--concurrency", "2", "--poll-interval", "0.1")
    running = wait_for(
        lambda: (r := result_of(waiting)).status == TaskResultStatus.RUNNING and r, message=lambda: worker.output()
    )
    assert running.worker_ids == [worker_id(worker)] and running.started_at is not None
    assert running.finished_at is None and running.errors == []

    exited = tasks.exits.enqueue()
    wait_for(lambda: finished(exited), message=lambda: worker.output())
    assert result_of(exited).status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result_of(exited).errors] == ["builtins.SystemExit"]
    assert worker.alive()
    after = tasks.add.enqueue(1, 1)
    wait_for(lambda: finished(after), message=lambda: worker.output())
    assert result_of(after).return_value == 2
    assert result_of(waiting).status == TaskResultStatus.RUNNING

    release.touch()
    wait_for(lambda: finished(waiting), message=lambda: worker.output())
    assert result_of(waiting).return_value == "released"
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_tasks_run_in_priority_order(workers):
    later = [tasks.later.enqueue(n) for n in range(3)]
    plain = tasks.add.enqueue(1, 2)
    urgent = tasks.urgent.enqueue(1)
    worker = workers("--concurrency", "1", "--poll-interval", "0.1")
    wait_for(lambda: finished(*later, plain, urgent), message=lambda: worker.output())
    order = sorted([urgent, plain, *later], key=lambda r: result_of(r).started_at)
    assert [r.id for r in order] == [urgent.id, plain.id, *(r.id for r in later)]
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_a_task_is_not_run_before_its_transaction_commits(workers):
    worker = workers("--poll-interval", "0.1")
    with transaction.atomic():
        enqueued = tasks.add.enqueue(20, 22)
        holds_for(lambda: result_of(enqueued).status == TaskResultStatus.READY, duration=1.0)
    wait_for(lambda: finished(enqueued), message=lambda: worker.output())
    assert result_of(enqueued).return_value == 42
    assert worker.stop() == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_running_a_task_costs_one_attempt_and_another_worker_retries_it(workers, tmp_path: Path):
    release = tmp_path / "release"
    waiting = tasks.waits_for.using(backend="retrying").enqueue(str(release))
    first = workers("--poll-interval", "0.1")
    wait_for(lambda: Path(f"{release}.started").exists(), message=first.output)
    assert result_of(waiting, "retrying").status == TaskResultStatus.RUNNING
    first.kill()  # SIGKILL: its watchdog records the attempt as lost, to be retried after the backoff
    release.touch()
    second = workers("--poll-interval", "0.1")
    wait_for(lambda: finished(waiting, backend="retrying"), timeout=30, message=lambda: second.output())

    result = result_of(waiting, "retrying")
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == "released"
    assert result.worker_ids == [worker_id(first), worker_id(second)]
    assert [e.exception_class_path for e in result.errors] == ["doctorjob.backends.WorkerLost"]
    assert "worker lost" in result.errors[0].traceback
    assert result.errors[0].exception_class.__name__ == "WorkerLost"
    assert second.stop() == 0
