"""Jobs and signal receivers for tests/acceptance/test_lifecycle.py.

A schedule makes its worker enqueue ticks and a receiver hears every job, so they are not
registered at import time: a worker process registers them when started with
``DOCTORJOB_TESTS_LIFECYCLE=1`` in its environment (receivers: ``DOCTORJOB_TESTS_SIGNALS`` names
the file they append to), and the test process inside ``lifecycle_jobs()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from doctorjob import job

from .jobs_issue4 import restored_registry

LIFECYCLE = "DOCTORJOB_TESTS_LIFECYCLE"
SIGNALS = "DOCTORJOB_TESTS_SIGNALS"


def yearly(payload, ctx):
    return ctx.key


def urgent(payload, ctx):
    return ctx.job_id


def fails(payload, ctx):
    raise RuntimeError(f"attempt {ctx.attempt} failed")


def register_lifecycle_jobs() -> None:
    job("lifecycle.yearly", queue="lifecycle-ticks", schedule="0 0 1 1 *")(yearly)
    job("lifecycle.urgent", queue="lifecycle", singleton=True, priority=100)(urgent)
    job("lifecycle.fails", queue="lifecycle", max_attempts=2, backoff={"base": 0, "jitter": 0})(fails)


@contextmanager
def lifecycle_jobs() -> Iterator[None]:
    with restored_registry():
        register_lifecycle_jobs()
        yield


def connect_receivers(path: Path) -> None:
    """Receivers that write one line per signal (``started ID ATTEMPT`` and ``finished ID OUTCOME
    STATUS ATTEMPTS ERROR``), and two that raise."""
    from doctorjob.signals import job_finished, job_started

    def write(line: str) -> None:
        with path.open("a") as log:
            log.write(line + "\n")

    def started(sender, job, **kwargs):
        write(f"started {job.pk} {job.attempts} {sender.__name__}")

    def finished(sender, job, outcome, **kwargs):
        write(f"finished {job.pk} {outcome} {job.status} {job.attempts} {job.error}")

    def broken(sender, job, **kwargs):
        raise RuntimeError(f"receiver broke on job {job.pk}")

    for signal in (job_started, job_finished):
        signal.connect(broken, weak=False)
    job_started.connect(started, weak=False)
    job_finished.connect(finished, weak=False)


if os.environ.get(LIFECYCLE) == "1":
    register_lifecycle_jobs()
    if os.environ.get(SIGNALS):
        connect_receivers(Path(os.environ[SIGNALS]))
