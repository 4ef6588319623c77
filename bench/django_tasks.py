"""The task the tasks bench enqueues (imported once Django is set up: @task needs TASKS)."""

from __future__ import annotations

from django.tasks import task


@task
def noop(n: int) -> None:
    """Do nothing: a drain of these measures what running a Django task through doctorjob costs."""
