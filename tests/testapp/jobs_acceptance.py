"""Extra handlers for tests/acceptance (owned by those tests)."""

import os
import time
from pathlib import Path

from doctorjob import job

from .models import Run


@job("tests.acceptance.touch")
def touch(payload, ctx):
    """Write the file the payload names: the test sees that this very job ran."""
    Path(payload["path"]).write_text(f"{ctx.job_id} {os.getpid()}")
    return ctx.job_id


@job("tests.acceptance.per_attempt", atomic=True, max_attempts=3, backoff={"base": 0})
def per_attempt(payload, ctx):
    """Write ``started.N`` for attempt N, wait for ``release.N``, then fail if it says "fail",
    else write a Run row (job_id * 100 + N) and succeed. Each attempt is steered on its own."""
    folder = Path(payload["dir"])
    (folder / f"started.{ctx.attempt}").write_text(str(os.getpid()))
    release = folder / f"release.{ctx.attempt}"
    deadline = time.monotonic() + payload.get("timeout", 60)
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    if release.read_text() == "fail":
        raise RuntimeError(f"attempt {ctx.attempt} fails as told")
    Run.objects.create(job_id=ctx.job_id * 100 + ctx.attempt, pid=os.getpid())
    return {"attempt": ctx.attempt}


@job("tests.acceptance.hangs", timeout=1, max_attempts=2, backoff={"base": 0, "jitter": 0})
def hangs(payload, ctx):
    """Say it started (``started.N`` for attempt N), then hang well past its 1-second timeout."""
    (Path(payload["dir"]) / f"started.{ctx.attempt}").write_text(str(os.getpid()))
    deadline = time.monotonic() + payload.get("seconds", 30)
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "finished, too late"


@job("tests.acceptance.hangs_in_the_database", timeout=1, atomic=True, max_attempts=2, backoff={"base": 0, "jitter": 0})
def hangs_in_the_database(payload, ctx):
    """An atomic job whose statement outlasts its timeout: the database cancels it (PostgreSQL)."""
    from django.db import connection

    Run.objects.create(job_id=ctx.job_id * 100 + ctx.attempt, pid=os.getpid())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(30)")


@job("tests.acceptance.kills_its_worker", max_attempts=3, backoff={"base": 0, "jitter": 0})
def kills_its_worker(payload, ctx):
    """Say it started (``started.N`` for attempt N), then end the whole worker process at once,
    as a segfault, ``os._exit`` in a library or the OOM killer would."""
    (Path(payload["dir"]) / f"started.{ctx.attempt}").write_text(str(os.getpid()))
    os._exit(70)


@job("tests.acceptance.storm_atomic", atomic=True, max_attempts=25, backoff={"base": 0, "jitter": 0})
def storm_atomic(payload, ctx):
    """An Effect row in the job's own transaction: it commits with the success mark or not at all."""
    from .models import Effect

    Effect.objects.create(job_id=ctx.job_id)
    time.sleep(payload["ms"] / 1000)


@job("tests.acceptance.storm_plain", max_attempts=25, backoff={"base": 0, "jitter": 0})
def storm_plain(payload, ctx):
    """Work outside any transaction, then a line in a file: each line is a run that got that far."""
    time.sleep(payload["ms"] / 1000)
    with open(payload["runs"], "a") as runs:
        runs.write(f"{ctx.job_id}\n")
