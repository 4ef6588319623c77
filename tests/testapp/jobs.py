"""Handlers the tests enqueue; they report what happened through rows, not sleeps."""

import os
import time
from pathlib import Path

from django.db import IntegrityError

from doctorjob import PermanentError, job

from .models import Effect, Run


@job("tests.noop")
def noop(payload, ctx):
    return {"n": payload.get("n")}


@job("tests.record_run", max_attempts=5)
def record_run(payload, ctx):
    """Insert a Run row: a second run of the same job breaks the unique constraint."""
    try:
        Run.objects.create(job_id=ctx.job_id, pid=os.getpid())
    except IntegrityError:
        Path(payload.get("dupes", "/tmp/doctorjob-dupes")).open("a").write(f"{ctx.job_id}\n")
        raise
    return {"pid": os.getpid()}


@job("tests.block", max_attempts=3, backoff={"base": 0})
def block(payload, ctx):
    """Signal that it started (a file), then wait for a release file or a timeout."""
    Path(payload["started"]).write_text(f"{os.getpid()} {ctx.attempt}")
    deadline = time.monotonic() + payload.get("timeout", 60)
    while time.monotonic() < deadline:
        if payload.get("release") and Path(payload["release"]).exists():
            break
        time.sleep(0.02)
    Run.objects.create(job_id=ctx.job_id * 100 + ctx.attempt, pid=os.getpid())
    return "done"


@job("tests.fail", max_attempts=3, backoff={"base": 0.01, "jitter": 0})
def fail(payload, ctx):
    raise RuntimeError(payload.get("message", "boom"))


@job("tests.fail_once", max_attempts=3, backoff={"base": 0, "jitter": 0})
def fail_once(payload, ctx):
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


@job("tests.permanent")
def permanent(payload, ctx):
    raise PermanentError("this will never work")


@job("tests.atomic_write", atomic=True, max_attempts=5)
def atomic_write(payload, ctx):
    Effect.objects.create(job_id=ctx.job_id)
    if payload.get("crash_file") and ctx.attempt == 1:
        Path(payload["crash_file"]).write_text(str(os.getpid()))
        time.sleep(60)  # the test SIGKILLs us here, after the write, before the commit
    return "written"


@job(
    "tests.typed",
    schema={
        "type": "object",
        "required": ["client_id"],
        "properties": {"client_id": {"type": "integer"}},
        "additionalProperties": False,
    },
)
def typed(payload, ctx):
    return payload["client_id"]


from . import jobs_acceptance, jobs_integration, jobs_issue4, jobs_lifecycle, jobs_relay, jobs_trees  # noqa: E402,F401  (more handlers, kept by test suite)  # noqa
