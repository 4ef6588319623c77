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
