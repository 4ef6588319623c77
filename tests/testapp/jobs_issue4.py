"""Handlers for the tests of definitions, versions, schedules, overlap and history (issue 4).

Jobs that would change what EVERY worker does (a schedule makes each worker enqueue ticks, a
concurrency key adds a claim query to each loop) are not registered at import time: a worker
process registers them when started with ``DOCTORJOB_TESTS_ISSUE4_EXTRA=1`` in its environment,
and the test process inside ``extra_jobs()``. Other tests' workers never see them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from doctorjob import job
from doctorjob.registry import registry

EXTRA = "DOCTORJOB_TESTS_ISSUE4_EXTRA"

REPORT_SCHEMA = {
    "type": "object",
    "required": ["format"],
    "properties": {"format": {"enum": ["csv", "pdf"]}, "rows": {"type": "integer"}},
    "additionalProperties": False,
}


@job("issue4.report", queue="issue4", payload={"format": "csv"}, schema=REPORT_SCHEMA)
def report(payload, ctx):
    """A job with a default payload and a schema: for run_job, run now and overrides."""
    return payload


@job("issue4.versioned", version=3, min_version=2)
def versioned(payload, ctx):
    """Version 3 of a job whose code can still handle data of version 2, not version 1."""
    return {"job_id": ctx.job_id}


@job("issue4.logs", version=2, max_attempts=2, backoff={"base": 0, "jitter": 0})
def logs(payload, ctx):
    """Log through several loggers (marked 'issue4-inside'); fail the first attempt if asked."""
    logging.getLogger("issue4.some_library").warning("issue4-inside library warning")
    logging.getLogger().error("issue4-inside root error")
    logging.getLogger("doctorjob").info("issue4-inside doctorjob info")
    ctx.logger.info("issue4-inside ctx.logger info")
    try:
        raise ValueError("handled")
    except ValueError:
        logging.getLogger("issue4.some_library").exception("issue4-inside exception")
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


@job("issue4.workers_seen")
def workers_seen(payload, ctx):
    """Return the Worker row of the worker running this job, as the job sees it."""
    from doctorjob.models import Worker

    return list(Worker.objects.filter(name=ctx.worker).values("host", "pid", "queues", "concurrency", "lease", "lost"))


def record_interval(payload, ctx, key: str) -> None:
    """Run for a while and append ``key job_id attempt pid start end`` to ``payload['log']``.

    With ``release``, say so in ``started`` and run until the release file exists (or a
    timeout): the test decides when this run ends, e.g. after killing its worker.
    """
    start = time.time()
    if payload.get("started"):
        Path(payload["started"]).write_text(f"{os.getpid()} {ctx.attempt}")
    if payload.get("release"):
        deadline = time.monotonic() + payload.get("timeout", 60)
        while not Path(payload["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        time.sleep(payload.get("seconds", 0))  # the work whose overlap the tests look for
    end = time.time()
    line = f"{key} {ctx.job_id} {ctx.attempt} {os.getpid()} {start!r} {end!r}\n"
    with open(payload["log"], "a") as log:  # one short append per run
        log.write(line)


def every_second(payload, ctx):
    return ctx.key


def singleton(payload, ctx):
    record_interval(payload, ctx, "singleton")


def singleton_or_skip(payload, ctx):
    return ctx.job_id


def per_tenant(payload, ctx):
    record_interval(payload, ctx, f"tenant-{payload['tenant']}")


def adhoc(payload, ctx):
    """The handler of the jobs a test registers for itself with register_adhoc()."""
    return payload


def register_adhoc(name: str, **options):
    """Register ``adhoc`` as job ``name`` (again, to change its options as a deploy would)."""
    return job(name, **options)(adhoc).job


def register_extra_jobs() -> None:
    job("issue4.every_second", queue="issue4-ticks", schedule="*/1 * * * * *")(every_second)
    job("issue4.singleton", queue="issue4-overlap", singleton=True)(singleton)
    job("issue4.singleton_or_skip", queue="issue4-overlap", singleton=True, on_overlap="skip")(singleton_or_skip)
    job("issue4.per_tenant", queue="issue4-overlap", concurrency_key=lambda p: p["tenant"])(per_tenant)


@contextmanager
def restored_registry() -> Iterator[None]:
    """Let the block register (or unregister) jobs in this process; restore the registry after."""
    saved = dict(registry)
    try:
        yield
    finally:
        registry.clear()
        registry.update(saved)


@contextmanager
def extra_jobs() -> Iterator[None]:
    """Register the extra jobs in this process for a while."""
    with restored_registry():
        register_extra_jobs()
        yield


if os.environ.get(EXTRA) == "1":
    register_extra_jobs()
