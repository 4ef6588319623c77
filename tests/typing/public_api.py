"""Checked by mypy --strict in .ci/run, never run: the public API is typed precisely enough that
a user's type checker catches misuse. Each ``type: ignore[...]`` marks a line that must be an
error; mypy's warn_unused_ignores (part of --strict) fails the check should it stop being one."""

from collections.abc import Sequence
from datetime import timedelta

from doctorjob import Child, JobContext, enqueue, enqueue_many, job
from doctorjob.models import Job
from doctorjob.relays import Relay, RelayUnavailable
from doctorjob.testing import Ran, assert_enqueued, enqueued, perform, run_jobs


@job("typing.greet", queue="emails", max_attempts=5)
def greet(payload: dict[str, str], ctx: JobContext) -> str:
    return f"hello {payload['name']}, attempt {ctx.attempt}"


@job
def bare(payload: object, ctx: JobContext) -> None:
    ctx.logger.info("ran")


# @job returns the handler as it came, its signature intact.
text: str = greet({"name": "x"}, JobContext(1, "typing.greet", "emails", 1, 5))
greet({"name": "x"})  # type: ignore[call-arg]

queued: Job = enqueue("typing.greet", {"name": "x"}, delay=timedelta(seconds=5), priority=3)
enqueue(greet, {"name": "x"}, delay=2.5, key="k", queue="emails")
enqueue("typing.greet", {"name": "x"}, delay="soon")  # type: ignore[arg-type]
enqueue("typing.greet", {"name": "x"}, priority="high")  # type: ignore[arg-type]
enqueue("typing.greet", {"name": "x"}, retries=3)  # type: ignore[call-arg]
tree: Job = enqueue("typing.greet", {"name": "x"}, children=[Child(greet, {"name": "y"}, on_failure="ignore")])
Child("typing.greet", delay="soon")  # type: ignore[arg-type]
Child("typing.greet", retries=3)  # type: ignore[call-arg]
progress: object = JobContext(1, "typing.greet", "emails", 1, 5).recover_progress()
many: list[Job] = enqueue_many([("typing.greet", {"name": "x"}), {"job": bare}])

ran: list[Ran] = run_jobs(queues=["emails"], until_empty=False)
outcome: str = ran[0].outcome
matching: list[Job] = assert_enqueued(greet, {"name": "x"}, count=1, queue="emails")
waiting: list[Job] = enqueued("typing.greet")
result: object = perform(greet, {"name": "x"}, attempt=2)


# The outbox relay: a relay job, and a Relay of one's own.
@job("typing.ship", relay="celery", task="orders.tasks.ship")
def ship(payload: dict[str, int], ctx: JobContext) -> None: ...


@job("typing.bad_relay", relay=3)  # type: ignore[call-overload, untyped-decorator]
def bad_relay(payload: object, ctx: JobContext) -> None: ...


class Webhook(Relay):
    def __init__(self, *, url: str) -> None:
        self.url = url

    def publish(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            raise RelayUnavailable("nothing to do")


relayed_at = queued.relayed_at
