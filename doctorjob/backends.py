"""A ``django.tasks`` backend: Django's Tasks API (Django 6), run by doctorjob's workers.

``TASKS = {"default": {"BACKEND": "doctorjob.backends.DoctorJobBackend"}}`` makes
``Task.enqueue()`` write a ``Job`` row on the caller's connection, in the caller's transaction
(never ``on_commit``), so a task commits with the data it refers to or not at all. One task is
one job of the reserved job type ``doctorjob.task``, whose payload names the task and holds its
arguments; ``run_jobs`` runs it with leases, retries, dead letters and pauses like any job, and
the admin lists it. ``TaskResult.id`` is the job's id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import django
from django.core.exceptions import ImproperlyConfigured

if django.VERSION < (6, 0):
    raise ImproperlyConfigured(
        f"doctorjob.backends.DoctorJobBackend needs Django 6.0 or later (django.tasks); this is Django "
        f"{django.get_version()}: upgrade Django, or enqueue doctorjob jobs with doctorjob.enqueue()"
    )

from django.conf import settings as django_settings
from django.core import checks
from django.core.signals import setting_changed
from django.db import router
from django.tasks import Task, TaskContext, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.module_loading import import_string

from . import task_results as results
from .exceptions import InvalidPayload
from .registry import QUEUE_NAME, QUEUE_RULE, JobType, registry
from .signals import job_finished, job_started
from .task_results import AnyResult, AnyTask

__all__ = ["TASK_JOB", "DoctorJobBackend", "WorkerLost"]

# The job type every task runs through; its payload says which task.
TASK_JOB = "doctorjob.task"
OPTIONS = {"MAX_ATTEMPTS"}
# What a task's job holds, checked as a job's schema is (by enqueue, the worker and the admin's
# requeue of a corrected dead letter), but by hand: jsonschema costs 60 µs a call.
PAYLOAD_KEYS = {"task": str, "args": list, "kwargs": dict, "backend": str}
_KINDS = {str: "a non-empty string", list: "an array", dict: "an object"}
_MAX_ID = 2**63 - 1
P = ParamSpec("P")
R = TypeVar("R")


class WorkerLost(Exception):
    """The ``TaskError`` of an attempt whose worker died or lost its lease while running it."""


class DoctorJobBackend(BaseTaskBackend):
    """Run Django tasks as doctorjob jobs: transactional enqueue, leases, retries, the admin.

    ``OPTIONS["MAX_ATTEMPTS"]`` (default 1, as Django's API promises one run) lets failed tasks
    be retried with ``DOCTORJOB["BACKOFF"]``.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.max_attempts = self.options.get("MAX_ATTEMPTS", 1) if isinstance(self.options, dict) else None
        register()

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = list(super().check(**kwargs))
        where = f"TASKS[{self.alias!r}]"
        if "doctorjob" not in django_settings.INSTALLED_APPS:
            errors.append(
                checks.Error(
                    f"{where} uses DoctorJobBackend, but 'doctorjob' is not in INSTALLED_APPS", id="doctorjob.E101"
                )
            )
        for queue in sorted(self.queues):
            if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
                errors.append(checks.Error(f"{where} QUEUES: {QUEUE_RULE}, got {queue!r}", id="doctorjob.E102"))
        if not isinstance(self.options, dict):
            errors.append(checks.Error(f"{where} OPTIONS must be a dict, got {self.options!r}", id="doctorjob.E103"))
        else:
            for name in sorted(set(self.options) - OPTIONS):
                errors.append(
                    checks.Error(
                        f"{where} OPTIONS: unknown option {name!r}; DoctorJobBackend knows {sorted(OPTIONS)}",
                        id="doctorjob.E103",
                    )
                )
            if problem := _max_attempts_problem(self.options.get("MAX_ATTEMPTS", 1)):
                errors.append(checks.Error(f"{where} OPTIONS MAX_ATTEMPTS {problem}", id="doctorjob.E104"))
        return errors

    def validate_task(self, task: AnyTask) -> None:
        """Django's rules, then doctorjob's: a queue name every database stores, an aware run_after."""
        super().validate_task(task)
        if not isinstance(task.queue_name, str) or not QUEUE_NAME.fullmatch(task.queue_name):
            raise InvalidTask(f"Queue {task.queue_name!r} is not valid for doctorjob: {QUEUE_RULE}.")
        if task.run_after is not None and timezone.is_naive(task.run_after):
            raise InvalidTask("run_after must be an aware datetime.")

    def enqueue(self, task: Task[P, R], args: Sequence[Any], kwargs: dict[str, Any]) -> TaskResult[P, R]:
        """Write the task's job in the caller's transaction and return its READY result."""
        from .outbox import enqueue

        self.validate_task(task)
        if problem := _max_attempts_problem(self.max_attempts):
            raise ImproperlyConfigured(f"TASKS[{self.alias!r}] OPTIONS MAX_ATTEMPTS {problem}")
        args, kwargs = results.arguments(task, args, kwargs)
        payload = {
            "task": task.module_path,
            "args": args,
            "kwargs": kwargs,
            "backend": task.backend,
            "run_after": task.run_after.isoformat() if task.run_after is not None else None,
        }
        job = enqueue(
            TASK_JOB,
            payload,
            queue=task.queue_name,
            priority=int(task.priority),
            run_at=task.run_after,
            max_attempts=self.max_attempts,
            using=router.db_for_write(_models().Job),
        )
        result = results.build_result(job, [], task)
        task_enqueued.send(type(self), task_result=result)
        return cast("TaskResult[P, R]", result)

    def get_result(self, result_id: str) -> AnyResult:
        """The task's result as stored now; TaskResultDoesNotExist for any id no task has."""
        models = _models()
        pk = _job_id(result_id)
        alias = router.db_for_write(models.Job)  # where enqueue() wrote: the caller sees its own tasks
        try:
            job = models.Job.objects.using(alias).get(pk=pk, name=TASK_JOB)
        except models.Job.DoesNotExist:
            raise TaskResultDoesNotExist(result_id) from None
        return results.build_result(job, results.attempts(alias, job.pk) if job.attempts else [])


# -- the job type that runs tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class TaskJobType(JobType):
    """Calls the task the payload names, with ``TaskContext`` when it takes one; a return value
    that is not JSON fails the attempt (raising here, so it is recorded with its traceback)."""

    def call(self, payload: Any, ctx: Any) -> Any:
        result = _take_running(ctx.job_id)
        if result is None:  # job_started's receiver did not run (or raised): read the job
            result = _started_result(_models().Job.objects.get(pk=ctx.job_id))
        task = result.task
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = task.call(*result.args, **result.kwargs)
        return results.return_value(task, value)

    def validate(self, payload: Any) -> None:
        """Raise InvalidPayload unless ``payload`` names a task and holds its arguments."""
        if not isinstance(payload, dict):
            raise InvalidPayload(f"the payload of job '{TASK_JOB}' must be an object, got {payload!r:.80}")
        for key, kind in PAYLOAD_KEYS.items():
            value = payload.get(key)
            if not isinstance(value, kind) or (kind is str and not value):
                raise InvalidPayload(f"payload['{key}'] of job '{TASK_JOB}' must be {_KINDS[kind]}, got {value!r:.80}")
        run_after = payload.get("run_after")
        if run_after is not None and not isinstance(run_after, str):
            raise InvalidPayload(f"payload['run_after'] of job '{TASK_JOB}' must be a string or null")

    @property
    def queues(self) -> frozenset[str]:
        """Every queue a DoctorJobBackend of TASKS allows."""
        from django.tasks import task_backends

        found = {self.queue}
        for alias in configured(getattr(django_settings, "TASKS", None)):
            found |= set(task_backends[alias].queues)
        return frozenset(found)


def register() -> None:
    """Register the job type that runs tasks and connect the task signals (idempotent): at
    start-up when TASKS names this backend (apps.py), and whenever a backend is made."""
    if TASK_JOB not in registry:
        registry[TASK_JOB] = TaskJobType(TASK_JOB, _not_called, max_attempts=1)
    job_started.connect(_send_task_started, dispatch_uid="doctorjob.task_started")
    job_finished.connect(_send_task_finished, dispatch_uid="doctorjob.task_finished")


def _not_called(payload: Any, ctx: Any) -> Any:  # TaskJobType.call replaces the handler
    raise NotImplementedError


# job_started's receiver builds the RUNNING result, sends task_started and leaves the result for
# TaskJobType.call, which runs next in the same handler thread, to hand to the task as TaskContext.
_running = threading.local()


def _take_running(job_id: int) -> AnyResult | None:
    found = getattr(_running, "result", None)
    _running.result = None
    return found[1] if found is not None and found[0] == job_id else None


def _send_task_started(sender: Any, job: Any, **kwargs: Any) -> None:
    if job.name != TASK_JOB:
        return
    result = _started_result(job)
    _running.result = (job.pk, result)
    task_started.send(_backend_class(result), task_result=result)


def _started_result(job: Any) -> AnyResult:
    alias = job._state.db or router.db_for_write(type(job))
    return results.build_result(job, results.attempts(alias, job.pk) if job.attempts > 1 else [])


def _send_task_finished(sender: Any, job: Any, outcome: str, **kwargs: Any) -> None:
    """After each attempt's outcome is stored: SUCCESSFUL, FAILED, or READY again for a retry."""
    if job.name != TASK_JOB or not task_finished.receivers:
        return
    from .models import Status

    alias = job._state.db or router.db_for_write(type(job))
    if job.status == Status.SUCCEEDED and job.attempts == 1:
        done = [results.Attempt(1, job.worker, job.started_at, "succeeded", "", "")]  # as stored: no query
    else:
        done = results.attempts(alias, job.pk)
    result = results.build_result(job, done)
    task_finished.send(_backend_class(result), task_result=result)


_senders: dict[str, type[BaseTaskBackend]] = {}


def _clear_senders(setting: str, **kwargs: Any) -> None:
    if setting == "TASKS":
        _senders.clear()


setting_changed.connect(_clear_senders, dispatch_uid="doctorjob.backends.clear_senders")


def _backend_class(result: AnyResult) -> type[BaseTaskBackend]:
    """The signals' sender: the class of the task's backend (looked up once per alias: the
    worker sends two signals per task, and ``task_backends`` is a thread-local lookup)."""
    sender = _senders.get(result.backend)
    if sender is None:
        try:
            sender = type(result.task.get_backend())
        except Exception:  # noqa: BLE001 - the alias went from TASKS since: the sender is still ours
            sender = DoctorJobBackend
        _senders[result.backend] = sender
    return sender


def _job_id(result_id: Any) -> int:
    """The job id a result id names: digits only, as ``str(job.pk)`` writes them."""
    if isinstance(result_id, str) and result_id.isascii() and result_id.isdigit():
        pk = int(result_id)
        if str(pk) == result_id and 0 < pk <= _MAX_ID:
            return pk
    raise TaskResultDoesNotExist(result_id)


def _max_attempts_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        return f"must be an integer from 1 to 2147483647, got {value!r}"
    return None


def _models() -> Any:
    from . import models

    return models


def configured(tasks: Any) -> Iterable[str]:
    """The aliases of TASKS whose backend is this one (or a subclass)."""
    if not isinstance(tasks, dict):
        return []
    found = []
    for alias, params in tasks.items():
        path = params.get("BACKEND") if isinstance(params, dict) else None
        try:
            cls = import_string(path) if isinstance(path, str) else None
        except ImportError:
            continue  # Django reports it
        if isinstance(cls, type) and issubclass(cls, DoctorJobBackend):
            found.append(alias)
    return found
