"""Django tasks (Django 6) for the tests of doctorjob.backends, run by real workers.

With ``DOCTORJOB_TESTS_TASK_SIGNALS`` naming a file, a worker process appends one line per
``task_started`` / ``task_finished`` to it (connected by TestAppConfig.ready).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from django.tasks import TaskContext, task
from django.tasks.signals import task_finished, task_started

TASK_SIGNALS = "DOCTORJOB_TESTS_TASK_SIGNALS"


class TaskBroke(Exception):
    """Raised by ``fails``: its class path must reach TaskResult.errors."""


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": args, "kwargs": kwargs}


@task(takes_context=True)
def attempts(context: TaskContext, fail_until: int = 0) -> dict[str, Any]:
    """Fail the first ``fail_until`` attempts; report what the context says."""
    if context.attempt <= fail_until:
        raise TaskBroke(f"attempt {context.attempt} fails")
    result = context.task_result
    return {"attempt": context.attempt, "id": result.id, "worker_ids": result.worker_ids, "status": result.status}


@task
async def double_later(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@task
def fails() -> None:
    raise TaskBroke("boom")


@task
def exits() -> None:
    raise SystemExit(3)


@task
def returns_a_set() -> Any:
    return {1, 2}


@task
def waits_for(path: str, timeout: float = 30.0) -> str:
    """Run until ``path`` exists: the test looks at the task while it runs. ``path.started``
    says that it runs (a claimed task whose worker dies before it starts costs no attempt)."""
    Path(f"{path}.started").touch()
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return "released"


@task(queue_name="tasks-urgent", priority=50)
def urgent(n: int) -> int:
    return n


@task(priority=-50)
def later(n: int) -> int:
    return n


def connect_receivers(path: Path) -> None:
    """``started ID ATTEMPT STATUS SENDER`` and ``finished ID STATUS ATTEMPTS ERRORS SENDER`` lines."""

    def write(line: str) -> None:
        with path.open("a") as log:
            log.write(line + "\n")

    def started(sender: Any, task_result: Any, **kwargs: Any) -> None:
        write(f"started {task_result.id} {task_result.attempts} {task_result.status} {sender.__name__}")

    def finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        write(
            f"finished {task_result.id} {task_result.status} {task_result.attempts} "
            f"{len(task_result.errors)} {sender.__name__}"
        )

    task_started.connect(started, weak=False, dispatch_uid="tests.task_started")
    task_finished.connect(finished, weak=False, dispatch_uid="tests.task_finished")


if os.environ.get(TASK_SIGNALS):
    connect_receivers(Path(os.environ[TASK_SIGNALS]))
