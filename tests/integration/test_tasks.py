"""doctorjob.backends.DoctorJobBackend: Django's Tasks API (Django 6), enqueued in the caller's
transaction and run by a Worker in this process (tests/acceptance/test_tasks.py: real run_jobs)."""

from __future__ import annotations

import django
import pytest

if django.VERSION < (6, 0):
    pytest.skip("django.tasks needs Django 6", allow_module_level=True)

import math  # noqa: E402
from datetime import timedelta  # noqa: E402

from asgiref.sync import async_to_sync  # noqa: E402
from django.db import transaction  # noqa: E402
from django.tasks import TaskResultStatus, default_task_backend, task_backends  # noqa: E402
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist  # noqa: E402
from django.tasks.signals import task_enqueued  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from doctorjob import InvalidPayload, enqueue  # noqa: E402
from doctorjob.backends import TASK_JOB, DoctorJobBackend, WorkerLost  # noqa: E402
from doctorjob.models import Job, JobExecution, QueueState, Status  # noqa: E402
from doctorjob.registry import registry  # noqa: E402
from doctorjob.task_results import WORKER_LOST, class_path  # noqa: E402
from tests.testapp import tasks  # noqa: E402

DEEP: list = [1]
for _ in range(40):
    DEEP = [DEEP]
NO_BACKOFF = {"BACKOFF": {"base": 0, "jitter": 0}, "LISTEN_DATABASE": False}


def test_the_backend_says_what_it_supports_and_its_settings_pass_the_checks():
    backend = task_backends["default"]
    assert isinstance(backend, DoctorJobBackend)
    assert (backend.supports_defer, backend.supports_priority, backend.supports_get_result) == (True, True, True)
    assert backend.supports_async_task
    assert backend.check() == []
    assert task_backends["retrying"].check() == []


def test_bad_backend_settings_are_reported_by_the_checks():
    backend = DoctorJobBackend("bad", {"QUEUES": ["ok", "no spaces"], "OPTIONS": {"MAX_ATTEMPTS": 0, "RETRY": 1}})
    ids = sorted(error.id for error in backend.check())
    assert ids == ["doctorjob.E102", "doctorjob.E103", "doctorjob.E104"]
    assert "unknown option 'RETRY'" in " ".join(error.msg for error in backend.check())


@pytest.mark.django_db
def test_enqueue_returns_a_ready_result_equal_to_get_result():
    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == ([2], {"b": 3}, "default")
    assert result.errors == [] and result.worker_ids == [] and result.started_at is None
    assert result.enqueued_at is not None and result.finished_at is None
    assert result == default_task_backend.get_result(result.id)
    assert result == tasks.add.get_result(result.id)
    job = Job.objects.get(pk=int(result.id))
    assert (job.name, job.queue, job.priority, job.max_attempts, job.status) == (TASK_JOB, "default", 0, 1, "queued")
    assert job.payload["task"] == "tests.testapp.tasks.add"


@pytest.mark.django_db
def test_queue_priority_and_run_after_map_onto_the_job_and_back():
    run_after = timezone.now() + timedelta(hours=1)
    enqueued = tasks.urgent.using(priority=80, run_after=run_after).enqueue(1)
    job = Job.objects.get(pk=int(enqueued.id))
    assert (job.queue, job.priority, job.run_at) == ("tasks-urgent", 80, run_after)
    again = default_task_backend.get_result(enqueued.id)
    assert again.task == tasks.urgent.using(priority=80, run_after=run_after)
    assert again == enqueued
    assert tasks.later.enqueue(1).task == tasks.later  # no run_after stays none


@pytest.mark.django_db
def test_a_rolled_back_transaction_or_savepoint_leaves_no_task():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 2)
        raise RuntimeError("roll back")
    with transaction.atomic():
        kept = tasks.add.enqueue(1, 1)
        try:
            with transaction.atomic():
                tasks.add.enqueue(2, 2)
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
    assert list(Job.objects.values_list("pk", flat=True)) == [int(kept.id)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, kwargs",
    [
        (({1, 2},), {}),
        ((object(),), {}),
        ((), {"when": timezone.now()}),
        ((math.nan,), {}),
        ((b"\xff",), {}),
        (("nul \x00",), {}),
        ((), {"deep": DEEP}),
    ],
)
def test_arguments_that_are_not_json_raise_type_error_and_write_nothing(args, kwargs):
    with pytest.raises(TypeError, match="tests.testapp.tasks.echo"):
        tasks.echo.enqueue(*args, **kwargs)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_arguments_are_normalised_as_django_does():
    result = tasks.echo.enqueue((1, 2), b"bytes", key={"nested": (3,)})
    assert (result.args, result.kwargs) == ([[1, 2], "bytes"], {"key": {"nested": [3]}})
    assert default_task_backend.get_result(result.id).args == [[1, 2], "bytes"]


@pytest.mark.django_db
def test_invalid_tasks_are_refused_before_anything_is_written():
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="Queue 'elsewhere'"):
        tasks.add.using(queue_name="elsewhere")
    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=timezone.now().replace(tzinfo=None))
    with (
        override_settings(TASKS={"default": {"BACKEND": "doctorjob.backends.DoctorJobBackend", "QUEUES": []}}),
        pytest.raises(InvalidTask, match="not valid for doctorjob"),
    ):
        tasks.add.using(queue_name="with space")
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("result_id", ["abc", "-1", "", "0", " 1", "01", "1.0", "9" * 30, str(2**63), "١"])
def test_an_unknown_id_of_any_shape_raises_task_result_does_not_exist(result_id):
    tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result_id)
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(default_task_backend.aget_result)(result_id)


@pytest.mark.django_db
def test_a_plain_doctorjob_job_is_not_a_task_result():
    job = enqueue("tests.noop", {})
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(job.pk))
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(job.pk + 1000))


@pytest.mark.django_db
def test_task_enqueued_is_sent_with_the_result():
    heard = []

    def receiver(sender, task_result, **kwargs):
        heard.append((sender, task_result, Job.objects.filter(pk=int(task_result.id)).exists()))

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert heard == [(DoctorJobBackend, result, True)]


@pytest.mark.django_db
def test_aenqueue_writes_the_task_too():
    result = async_to_sync(tasks.add.aenqueue)(4, 5)
    assert default_task_backend.get_result(result.id) == result


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_tasks_and_their_results_say_so(run_worker):
    added = tasks.add.enqueue(2, 3)
    echoed = tasks.echo.enqueue((1, 2), x=None)
    doubled = tasks.double_later.enqueue(21)
    context = tasks.attempts.enqueue()
    worker = run_worker()

    result = default_task_backend.get_result(added.id)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.worker_ids == [worker.id] and result.errors == [] and result.attempts == 1
    assert result.enqueued_at <= result.started_at == result.last_attempted_at <= result.finished_at
    assert result.task == tasks.add
    assert default_task_backend.get_result(echoed.id).return_value == {"args": [[1, 2]], "kwargs": {"x": None}}
    assert default_task_backend.get_result(doubled.id).return_value == 42
    seen = default_task_backend.get_result(context.id).return_value
    assert seen == {"attempt": 1, "id": context.id, "worker_ids": [worker.id], "status": "RUNNING"}


@pytest.mark.django_db(transaction=True)
def test_any_exception_or_a_non_json_return_value_fails_the_run_and_the_worker_carries_on(run_worker):
    failed, exited, returned_set = tasks.fails.enqueue(), tasks.exits.enqueue(), tasks.returns_a_set.enqueue()
    after = tasks.add.enqueue(1, 1)
    run_worker()

    for result_id, path, text in [
        (failed.id, "tests.testapp.tasks.TaskBroke", "TaskBroke: boom"),
        (exited.id, "builtins.SystemExit", "SystemExit: 3"),
        (returned_set.id, "builtins.TypeError", "Unsupported type"),
    ]:
        result = default_task_backend.get_result(result_id)
        assert result.status == TaskResultStatus.FAILED and result.finished_at is not None
        assert [e.exception_class_path for e in result.errors] == [path]
        assert "Traceback (most recent call last)" in result.errors[0].traceback
        assert text in result.errors[0].traceback
        with pytest.raises(ValueError, match="Task failed"):
            _ = result.return_value
    assert default_task_backend.get_result(failed.id).errors[0].exception_class is tasks.TaskBroke
    assert default_task_backend.get_result(after.id).return_value == 2
    assert Job.objects.get(pk=int(failed.id)).status == Status.DEAD  # one attempt: a dead letter


@pytest.mark.django_db(transaction=True)
def test_max_attempts_retries_a_task_with_one_error_and_one_worker_id_per_attempt(run_worker):
    enqueued = tasks.attempts.using(backend="retrying").enqueue(fail_until=1)
    assert Job.objects.get(pk=int(enqueued.id)).max_attempts == 2
    with override_settings(DOCTORJOB=NO_BACKOFF):
        first = run_worker(max_jobs=1)
        midway = task_backends["retrying"].get_result(enqueued.id)
        second = run_worker()
    assert midway.status == TaskResultStatus.READY and midway.finished_at is None
    assert midway.worker_ids == [first.id] and len(midway.errors) == 1
    result = task_backends["retrying"].get_result(enqueued.id)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {
        "attempt": 2,
        "id": enqueued.id,
        "worker_ids": [first.id, second.id],
        "status": "RUNNING",
    }
    assert result.worker_ids == [first.id, second.id] and result.attempts == 2
    assert [e.exception_class_path for e in result.errors] == ["tests.testapp.tasks.TaskBroke"]
    assert "attempt 1 fails" in result.errors[0].traceback
    assert result.started_at < result.last_attempted_at
    assert JobExecution.objects.filter(job_id=int(enqueued.id)).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_task_not_due_yet_stays_ready(run_worker):
    enqueued = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
    run_worker()
    assert default_task_backend.get_result(enqueued.id).status == TaskResultStatus.READY


@pytest.mark.django_db
def test_doctorjob_testing_runs_tasks_in_the_tests_transaction(doctorjob):
    result = tasks.add.enqueue(20, 22)
    doctorjob.run_jobs()
    assert default_task_backend.get_result(result.id).return_value == 42


def test_the_class_path_of_a_failure_is_read_from_its_traceback():
    def traceback_of(exc: BaseException) -> str:
        import traceback

        try:
            raise exc
        except BaseException as raised:  # noqa: BLE001
            return "".join(traceback.format_exception(raised))

    assert class_path(traceback_of(ValueError("a\nTraceback (most recent call last):\nx"))) == "builtins.ValueError"
    assert class_path(traceback_of(tasks.TaskBroke("x"))) == "tests.testapp.tasks.TaskBroke"
    assert class_path(traceback_of(WorkerLost())) == WORKER_LOST == "doctorjob.backends.WorkerLost"
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise tasks.TaskBroke("outer") from inner
    except tasks.TaskBroke as outer:
        outer.add_note("a note")
        import traceback

        assert class_path("".join(traceback.format_exception(outer))) == "tests.testapp.tasks.TaskBroke"


@pytest.mark.django_db
def test_the_admin_lists_tasks_as_jobs(admin_client):
    result = tasks.add.enqueue(1, 2)
    page = admin_client.get("/admin/doctorjob/job/")
    assert page.status_code == 200
    assert TASK_JOB in page.content.decode()
    detail = admin_client.get(f"/admin/doctorjob/job/{result.id}/change/")
    assert detail.status_code == 200 and "tests.testapp.tasks.add" in detail.content.decode()


def test_run_jobs_knows_the_queues_tasks_use():
    # run_jobs --queues tasks-urgent must not warn that no registered job uses that queue
    assert registry[TASK_JOB].queues == {"default", "tasks-urgent"}


@pytest.mark.django_db(transaction=True)
def test_a_paused_queue_holds_its_tasks(run_worker):
    QueueState.objects.create(name="tasks-urgent", paused=True)
    held, ran = tasks.urgent.enqueue(1), tasks.add.enqueue(1, 2)
    run_worker()
    assert default_task_backend.get_result(held.id).status == TaskResultStatus.READY
    assert default_task_backend.get_result(ran.id).status == TaskResultStatus.SUCCESSFUL


@pytest.mark.django_db
def test_a_task_payload_without_its_task_is_refused_like_any_bad_payload():
    with pytest.raises(
        InvalidPayload, match=r"payload\['task'\] of job 'doctorjob.task' must be a non-empty string, got None"
    ):
        enqueue(TASK_JOB, {"args": [], "kwargs": {}, "backend": "default"})
    assert not Job.objects.exists()
