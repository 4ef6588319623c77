"""Extra handlers for tests/integration and tests/unit (owned by those tests)."""

from doctorjob import job

from .models import Effect


@job("integration.defaults", queue="emails", priority=7, max_attempts=4)
def with_defaults(payload, ctx):
    """Its @job options are the defaults enqueue() must apply."""


@job("integration.fail_later", max_attempts=3, backoff={"base": 60, "factor": 2, "jitter": 0})
def fail_later(payload, ctx):
    """Fails; the next attempt is a minute away, so a burst worker leaves it queued."""
    raise RuntimeError(payload.get("message", "boom"))


@job("integration.fail_default_backoff")
def fail_default_backoff(payload, ctx):
    """Fails, with the global backoff."""
    raise ValueError("nope")


@job("integration.always_fail", max_attempts=3, backoff={"base": 0, "jitter": 0})
def always_fail(payload, ctx):
    """Fails every attempt and is retried at once, so one burst uses up its attempts."""
    raise RuntimeError(f"attempt {ctx.attempt} failed")


@job("integration.context", max_attempts=2)
def context(payload, ctx):
    """Return what the handler was told about its attempt."""
    ctx.logger.info("hello from the handler")
    return {
        "job_id": ctx.job_id,
        "name": ctx.name,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "key": ctx.key,
        "logger": ctx.logger.logger.name,
    }


@job("integration.unserialisable_result")
def unserialisable_result(payload, ctx):
    return {"ids": {1, 2}}


@job("integration.atomic_then_fail", atomic=True, max_attempts=1)
def atomic_then_fail(payload, ctx):
    """Write, then fail: with atomic=True the write must roll back."""
    Effect.objects.create(job_id=ctx.job_id)
    raise RuntimeError("failed after writing")


def _take_over(job_id: int) -> None:
    """From another connection, do what a second worker does once this job's lease has run out:
    sweep it back to the queue and claim it."""
    import threading
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from doctorjob import leases, maintenance
    from doctorjob.models import Job

    def rescue() -> None:
        try:
            # One transaction, as the rescue must be one step for the test: the worker under test
            # could otherwise claim the swept job itself before the rescuer does.
            with transaction.atomic():
                Job.objects.filter(pk=job_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
                maintenance.sweep_expired("default")
                leases.claim("default", worker="rescuer", limit=1, lease=300)
        finally:
            connection.close()

    thread = threading.Thread(target=rescue)
    thread.start()
    thread.join()


@job("integration.taken_over")
def taken_over(payload, ctx):
    """Lose the lease while running: the late success must change nothing."""
    _take_over(ctx.job_id)
    return "late"


@job("integration.atomic_taken_over", atomic=True)
def atomic_taken_over(payload, ctx):
    """Lose the lease, then write: with atomic=True the write must roll back."""
    _take_over(ctx.job_id)
    Effect.objects.create(job_id=ctx.job_id)
    return "late"


@job("integration.echo")
def echo(payload, ctx):
    """Return the payload as it reached the handler, whatever JSON value it is."""
    return payload


class Unprintable(Exception):
    """An exception whose message cannot be read: str() raises."""

    def __str__(self):
        raise RuntimeError("no message for you")


@job("integration.poison", max_attempts=1)
def poison(payload, ctx):
    """Produce what a worker must survive, by ``payload['kind']``."""
    kind = payload["kind"]
    if kind == "unprintable":
        raise Unprintable()
    if kind == "nul-error":
        raise ValueError("a NUL \x00 and a lone surrogate \udc80")
    if kind == "nul-result":
        return {"text": "a\x00b", "lone": "x\udc80y", "key\x00": [1, "\x00"]}
    if kind == "huge-int":
        return 10**5000  # json.dumps refuses ints of more than 4,300 digits
    if kind == "refused":
        return {"poison": True}  # a test's CHECK constraint refuses it
    return {"ok": ctx.job_id}


@job("integration.enqueues_another")
def enqueues_another(payload, ctx):
    """Enqueue a tests.noop job from a handler: doctorjob.testing.run_jobs() runs that one too."""
    from doctorjob import enqueue

    return enqueue("tests.noop", {"from": ctx.job_id}).pk


@job("integration.fails_once_slowly", max_attempts=2, backoff={"base": 3600, "jitter": 0})
def fails_once_slowly(payload, ctx):
    """Fail the first attempt with an hour of backoff, which doctorjob.testing.run_jobs() skips."""
    if ctx.attempt == 1:
        raise RuntimeError("not yet")
    return ctx.attempt


@job("integration.writes_then_fails", max_attempts=1)
def writes_then_fails(payload, ctx):
    """Write a row, then fail: in doctorjob.testing.run_jobs() the write is rolled back."""
    from .models import Run

    Run.objects.create(job_id=ctx.job_id)
    raise RuntimeError("after the write")


@job("integration.singleton", singleton=True)
def singleton(payload, ctx):
    """Never two at once: doctorjob.testing.run_jobs() runs queued ones one after the other."""
    return ctx.job_id
