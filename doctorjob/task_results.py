"""TaskResults from doctorjob's jobs, and the JSON rules for a task's arguments and return value:
what ``DoctorJobBackend.get_result()`` and the worker's task signals hand to Django (Django 6)."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from django.core.signals import setting_changed
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .payloads import first_problem

# Generic in django-stubs only.
AnyTask: TypeAlias = "Task[..., Any]"
AnyResult: TypeAlias = "TaskResult[..., Any]"
# The class of an attempt whose worker died or lost its lease (defined with the backend).
WORKER_LOST = "doctorjob.backends.WorkerLost"


@dataclass(frozen=True)
class Attempt:
    attempt: int
    worker: str
    started_at: datetime | None
    outcome: str
    error: str
    traceback: str


def attempts(alias: str, job_id: int) -> list[Attempt]:
    """The job's recorded attempts, in order."""
    from .models import JobExecution

    rows = (
        JobExecution.objects.using(alias)
        .filter(job_id=job_id)
        .order_by("attempt", "id")
        .values_list("attempt", "worker", "started_at", "outcome", "error", "traceback")
    )
    return [Attempt(*row) for row in rows]


def build_result(job: Any, attempts: Sequence[Attempt], task: AnyTask | None = None) -> AnyResult:
    """The TaskResult of the task ``job`` runs, from the job and its recorded attempts."""
    from .models import Outcome, Status

    payload = job.payload
    if task is None:
        task = _task(payload["task"], payload["backend"], job.priority, job.queue, payload.get("run_after"))
    status = _STATUS[job.status]
    attempts = [a for a in attempts if a.outcome != Outcome.SKIPPED]
    worker_ids = [a.worker for a in attempts]
    running = job.status == Status.RUNNING and not any(a.attempt == job.attempts for a in attempts)
    if running:  # the current attempt is recorded once it ends: its worker counts from the claim
        worker_ids.append(job.worker)
    starts = [a.started_at for a in attempts if a.started_at is not None]
    if running and job.started_at is not None:
        starts.append(job.started_at)
    return _new_result(
        task=task,
        id=str(job.pk),
        status=status,
        enqueued_at=job.created_at,
        started_at=min(starts) if starts else None,
        last_attempted_at=max(starts) if starts else None,
        finished_at=job.finished_at if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) else None,
        args=payload["args"],
        kwargs=payload["kwargs"],
        backend=payload["backend"],
        errors=[_error(a) for a in attempts if a.outcome in (Outcome.FAILED, Outcome.LOST)],
        worker_ids=worker_ids,
        _return_value=job.result if status == TaskResultStatus.SUCCESSFUL else None,
    )


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(TaskResult))


def _new_result(**values: Any) -> AnyResult:
    """``TaskResult(**values)`` without its ``__post_init__``, which normalises args and kwargs
    again: they were normalised by enqueue() and come back from JSON as they were. The worker
    makes two results per task, and that second normalisation was an eighth of the cost."""
    result: AnyResult = object.__new__(TaskResult)
    for name in _RESULT_FIELDS:
        object.__setattr__(result, name, values.get(name))
    return result


_STATUS = {
    "queued": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "succeeded": TaskResultStatus.SUCCESSFUL,
    "dead": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
    "skipped": TaskResultStatus.FAILED,
}


@functools.lru_cache(maxsize=1024)
def _task(path: str, backend: str, priority: int, queue: str, run_after: str | None) -> AnyTask:
    """The enqueued Task again: the module's Task with the options it was enqueued with."""
    try:
        found = import_string(path)
    except ImportError as exc:
        raise ValueError(f"task {path!r} cannot be imported: {exc}") from exc
    if not isinstance(found, Task):
        raise ValueError(f"{path!r} is not a Task (a function decorated with @django.tasks.task)")
    return found.using(
        priority=priority,
        queue_name=queue,
        run_after=datetime.fromisoformat(run_after) if run_after else None,
        backend=backend,
    )


def _clear_tasks(setting: str, **kwargs: Any) -> None:
    if setting == "TASKS":  # the Tasks were validated by the backends of the old setting
        _task.cache_clear()


setting_changed.connect(_clear_tasks, dispatch_uid="doctorjob.task_results.clear_tasks")

# The last line of a traceback's final section that starts at column 0 is `module.Class: message`
# (`Class` alone for builtins), which is how the class path of each failed attempt is kept.
_TRACEBACK_HEAD = "Traceback (most recent call last):"
_CLASS = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


def _error(attempt: Attempt) -> TaskError:
    """One failed attempt as Django's TaskError: the raised class's path and its traceback."""
    if attempt.outcome == "lost":
        return TaskError(
            exception_class_path=WORKER_LOST,
            traceback=attempt.traceback or attempt.error,
        )
    if not attempt.traceback:  # doctorjob's own verdicts: a timeout, an unknown job
        path = (
            "builtins.TimeoutError" if attempt.error.startswith("timed out") else "doctorjob.exceptions.DoctorJobError"
        )
        return TaskError(exception_class_path=path, traceback=attempt.error)
    return TaskError(exception_class_path=class_path(attempt.traceback), traceback=attempt.traceback)


def class_path(traceback: str) -> str:
    """The raised class's path: the first line at column 0 after the frames of the last section
    (a header in a message is followed by no frame)."""
    lines = traceback.splitlines()
    heads = [i for i, line in enumerate(lines[:-1]) if line == _TRACEBACK_HEAD and lines[i + 1].startswith("  File ")]
    for line in lines[heads[-1] + 1 if heads else 0 :]:
        if line and not line[0].isspace():
            found = _CLASS.match(line)
            if found:
                name = found[1]
                return name if "." in name else f"builtins.{name}"
            break
    return "builtins.Exception"


# -- arguments and return values ------------------------------------------------------------------


def arguments(task: AnyTask, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """args and kwargs as Django normalises them, or TypeError naming what is not JSON."""
    try:
        normal_args: list[Any] = normalize_json(list(args))  # type: ignore[assignment]
        normal_kwargs: dict[str, Any] = normalize_json(kwargs)  # type: ignore[assignment]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task {task.module_path!r}: its arguments must be JSON: {exc}") from exc
    for value, root in ((normal_args, "args"), (normal_kwargs, "kwargs")):
        if found := first_problem(value, root):
            where, bad, _ = found
            raise TypeError(f"task {task.module_path!r}: {where} ({bad!r:.60}) cannot be stored as JSON")
    return normal_args, normal_kwargs


def return_value(task: AnyTask, value: Any) -> Any:
    try:
        normal = normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task {task.module_path!r} returned a value that is not JSON: {exc}") from exc
    if found := first_problem(normal, "return value"):
        where, bad, why = found
        if why in ("type", "depth", "big-int"):
            raise TypeError(f"task {task.module_path!r}: its {where} ({bad!r:.60}) cannot be stored as JSON")
    return normal
