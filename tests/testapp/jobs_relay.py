"""Jobs a relay publishes (doctorjob.relays) rather than a worker running them."""

from doctorjob import job


@job("tests.relay.celery", relay="celery", task="tests.relay.record", max_attempts=3)
def to_celery(payload, ctx):
    raise AssertionError("a relay job must never run in a worker")


@job("tests.relay.custom", relay="custom", max_attempts=2, backoff={"base": 0, "jitter": 0})
def to_custom(payload, ctx):
    raise AssertionError("a relay job must never run in a worker")


@job("tests.relay.any")
def any_queue(payload, ctx):
    """Relayed when enqueued in a relay's QUEUES, run by workers anywhere else."""
    return {"ran": True}
