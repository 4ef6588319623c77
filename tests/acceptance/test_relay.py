"""The outbox relay against the real brokers: ``run_jobs --relay`` processes publishing to Redis
(through Celery, to real Celery worker processes, and through kombu) and to RabbitMQ (kombu).

Each test has its own Celery queue, exchange and queue names, so parallel runs never share a
message. The tests skip, saying so, only when a broker is unreachable; CI fails on such a skip.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import redis
from django.db import connection, transaction
from kombu import Connection, Exchange, Queue

from doctorjob import enqueue
from doctorjob.models import DeadLetter, Job, JobExecution, Status

from .helpers import ROOT, WorkerProcess, wait_for, worker_env

REDIS = os.environ.get("DOCTORJOB_TEST_REDIS", "redis://127.0.0.1:6379/7")
AMQP = os.environ.get("DOCTORJOB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def _unreachable(url: str) -> str | None:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=3).close()
    except OSError as exc:
        return f"{parts.hostname}:{parts.port} ({exc})"
    return None


@pytest.fixture
def brokers() -> None:
    for name, url in (("Redis", REDIS), ("RabbitMQ", AMQP)):
        if where := _unreachable(url):
            pytest.skip(f"broker unreachable: {name} at {where}")


@pytest.fixture
def names(brokers, tmp_path: Path):
    """This test's own names, the environment that gives them to relay and Celery processes, and
    the cleaning of what they left in Redis."""
    tag = f"dj-relay-{uuid.uuid4().hex[:10]}"
    env = {
        "DOCTORJOB_TEST_CELERY_QUEUE": tag,
        "DOCTORJOB_TEST_EXCHANGE": tag,
        "DOCTORJOB_TEST_RELAY_FILE": str(tmp_path / "relay.jsonl"),
    }
    client = redis.Redis.from_url(REDIS)
    yield SimpleNamespace(tag=tag, env=env, redis=client)
    for key in client.scan_iter(f"*{tag}*"):
        client.delete(key)


def start_relay(workers, names, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
    relay = workers("--relay", "--poll-interval", "0.1", *args, wait=False, env={**names.env, **(env or {})})

    def started() -> bool:
        assert relay.alive() or "relay started" in relay.output(), relay.output()
        return "relay started" in relay.output()

    wait_for(started, timeout=30, message=lambda: f"the relay to start:\n{relay.output()}")
    return relay


def relay_burst(names, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "django", "run_jobs", "--relay", "--burst", "--poll-interval", "0.1", *args],
        cwd=ROOT,
        env={**worker_env(), **names.env, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def celery_worker(names, tmp_path: Path):
    """A real Celery worker process of tests.relay.celery_app, consuming this test's queue."""
    log = (tmp_path / "celery.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.relay.celery_app", "worker", "-Q", names.tag,
         "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
        cwd=ROOT,
        env={**worker_env(), **names.env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    log.close()


def celery_messages(names) -> list[dict]:
    """The task messages waiting in this test's Celery queue (Redis list, oldest last)."""
    return [json.loads(raw) for raw in reversed(names.redis.lrange(names.tag, 0, -1))]


def closed_port() -> int:
    """A port nothing listens on: the broker is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BoundQueue:
    """A durable queue of ours bound to the relay's exchange (the relay declares no queue)."""

    def __init__(self, url: str, names, routing_key: str) -> None:
        self.connection = Connection(url)
        self.channel = self.connection.channel()
        self.exchange = Exchange(names.tag, type="direct", durable=True)(self.channel)
        self.exchange.declare()
        self.queue = Queue(names.tag, exchange=self.exchange, routing_key=routing_key, durable=True)(self.channel)
        self.queue.declare()

    def drain(self, expected: int, timeout: float = 30.0) -> list:
        messages: list = []

        def more() -> bool:
            while (message := self.queue.get(no_ack=True)) is not None:
                messages.append(message)
            return len(messages) >= expected

        wait_for(more, timeout=timeout, message=lambda: f"{expected} messages, got {len(messages)}")
        return messages

    def close(self) -> None:
        self.queue.delete()
        self.exchange.delete()
        self.connection.release()


def relayed_ids() -> list[int]:
    return list(Job.objects.filter(status=Status.RELAYED).order_by("id").values_list("id", flat=True))


pytestmark = pytest.mark.django_db(transaction=True)


def test_rolled_back_and_uncommitted_enqueues_never_reach_the_broker(workers, names):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue("tests.relay.celery", {"run": names.tag, "n": -1})
        raise ZeroDivisionError
    holding, release, held = threading.Event(), threading.Event(), []
    if connection.vendor != "sqlite":  # SQLite's open write transaction would lock the relay out

        def uncommitted() -> None:
            try:
                with transaction.atomic():
                    held.append(enqueue("tests.relay.celery", {"run": names.tag, "n": -2}).pk)
                    holding.set()
                    release.wait(60)
                    transaction.set_rollback(True)
            finally:
                from django.db import connections

                connections.close_all()

        thread = threading.Thread(target=uncommitted)
        thread.start()
        assert holding.wait(30)
    committed = enqueue("tests.relay.celery", {"run": names.tag, "n": 1})
    relay = start_relay(workers, names)
    try:
        wait_for(lambda: relayed_ids() == [committed.pk], message="the committed job to be relayed")
        assert [m["headers"]["id"] for m in celery_messages(names)] == [str(committed.pk)]
        assert [m["headers"]["task"] for m in celery_messages(names)] == ["tests.relay.record"]
    finally:
        release.set()
        if held:
            thread.join(30)
    assert relay.stop() == 0
    assert [m["headers"]["id"] for m in celery_messages(names)] == [str(committed.pk)]
    assert not Job.objects.filter(pk__in=held).exists()


def test_every_committed_job_reaches_a_real_celery_worker_and_sigterm_stops_the_relay(workers, names, celery_worker):
    with transaction.atomic():
        jobs = [enqueue("tests.relay.celery", {"run": names.tag, "n": n}) for n in range(50)]
    relay = start_relay(workers, names, "--batch-size", "20")
    wait_for(lambda: names.redis.llen(f"{names.tag}:work") == 50, timeout=60, message="50 tasks run by Celery")
    assert relay.stop() == 0, relay.output()
    assert "relay stopped" in relay.output()
    work = [item.decode() for item in names.redis.lrange(f"{names.tag}:work", 0, -1)]
    assert sorted(work) == sorted(f"{job.pk}:{n}" for n, job in enumerate(jobs))
    assert names.redis.llen(f"{names.tag}:deliveries") == 50
    assert relayed_ids() == [job.pk for job in jobs]
    assert not Job.objects.filter(relayed_at__isnull=True, status=Status.RELAYED).exists()


def test_200_jobs_reach_rabbitmq_through_kombu_in_enqueue_order(names):
    queue = BoundQueue(AMQP, names, routing_key="to-rabbitmq")
    try:
        with transaction.atomic():
            jobs = [enqueue("tests.relay.any", {"n": n}, queue="to-rabbitmq") for n in range(200)]
        relay_burst(names, "--batch-size", "50")
        messages = queue.drain(200)
    finally:
        queue.close()
    assert [m.properties["message_id"] for m in messages] == [str(job.pk) for job in jobs]
    assert [json.loads(m.body) for m in messages] == [
        {"id": job.pk, "name": "tests.relay.any", "queue": "to-rabbitmq", "payload": {"n": n}}
        for n, job in enumerate(jobs)
    ]
    assert messages[0].content_type == "application/json" and messages[0].delivery_info["routing_key"] == "to-rabbitmq"
    assert relayed_ids() == [job.pk for job in jobs]


def test_jobs_reach_redis_through_kombu(names):
    queue = BoundQueue(REDIS, names, routing_key="to-redis")
    try:
        jobs = [enqueue("tests.relay.any", {"n": n}, queue="to-redis") for n in range(20)]
        relay_burst(names)
        messages = queue.drain(20)
    finally:
        queue.close()
    assert [json.loads(m.body)["id"] for m in messages] == [job.pk for job in jobs]
    assert [m.properties["message_id"] for m in messages] == [str(job.pk) for job in jobs]


def test_with_the_brokers_down_nothing_is_lost_and_all_is_delivered_once_they_are_back(workers, names):
    queue = BoundQueue(AMQP, names, routing_key="to-rabbitmq")
    try:
        to_celery = [enqueue("tests.relay.celery", {"run": names.tag, "n": n}) for n in range(10)]
        to_rabbitmq = [enqueue("tests.relay.any", {"n": n}, queue="to-rabbitmq") for n in range(5)]
        port = closed_port()
        down = {
            "DOCTORJOB_TEST_REDIS": f"redis://127.0.0.1:{port}/7",
            "DOCTORJOB_TEST_AMQP": f"amqp://127.0.0.1:{port}//",
        }
        relay = start_relay(workers, names, env=down)
        for name in ("celery", "rabbitmq"):
            wait_for(
                lambda: (
                    f"WARNING doctorjob relay unavailable relay={name} " in relay.output()
                    or f"relay unavailable relay={name} " in relay.output()
                ),
                message=lambda: f"the {name} relay's warning:\n{relay.output()}",
            )
        assert relay.alive()
        jobs = Job.objects.filter(pk__in=[j.pk for j in to_celery + to_rabbitmq])
        # Between two tries (claimed, refused, returned): queued, no attempt counted, no error kept.
        wait_for(
            lambda: set(jobs.values_list("status", "attempts", "error")) == {(Status.QUEUED, 0, "")},
            message=lambda: f"the jobs queued again: {set(jobs.values_list('status', 'attempts', 'error'))}",
        )
        assert not JobExecution.objects.exists() and not DeadLetter.objects.exists()
        assert relay.stop() == 0

        relay_burst(names)  # the brokers are back: the real URLs
        messages = queue.drain(5)
    finally:
        queue.close()
    assert [m.properties["message_id"] for m in messages] == [str(job.pk) for job in to_rabbitmq]
    assert [m["headers"]["id"] for m in celery_messages(names)] == [str(job.pk) for job in to_celery]
    assert set(jobs.values_list("status", "attempts")) == {(Status.RELAYED, 1)}


def test_a_relay_killed_between_publishing_and_marking_republishes_with_the_same_id_and_celery_dedups(
    workers, names, celery_worker, tmp_path
):
    marker = tmp_path / "killed"
    dying = {
        "DOCTORJOB_TEST_CELERY_BACKEND": "tests.testapp.relays.DyingCeleryRelay",
        "DOCTORJOB_TEST_MARKER": str(marker),
    }
    with transaction.atomic():
        jobs = [enqueue("tests.relay.celery", {"run": names.tag, "n": n}) for n in range(5)]
    first = start_relay(workers, names, "--lease", "3", env=dying)
    assert first.wait(30) == -signal.SIGKILL
    assert marker.read_text() == ",".join(str(job.pk) for job in jobs)
    # Published, never marked: still running under the dead relay's lease (or already returned to
    # the queue by its own maintenance thread, had the publish outlasted the lease on a busy machine).
    assert set(Job.objects.values_list("status", flat=True)) <= {Status.RUNNING, Status.QUEUED}
    wait_for(lambda: names.redis.llen(f"{names.tag}:deliveries") == 5, timeout=60, message="the first deliveries")

    second = start_relay(workers, names, "--lease", "3", env=dying)  # the marker is there: it lives
    wait_for(lambda: relayed_ids() == [job.pk for job in jobs], timeout=60, message="the jobs relayed again")
    wait_for(lambda: names.redis.llen(f"{names.tag}:deliveries") == 10, timeout=60, message="the second deliveries")
    assert second.stop() == 0
    deliveries = [item.decode() for item in names.redis.lrange(f"{names.tag}:deliveries", 0, -1)]
    assert sorted(deliveries) == sorted(str(job.pk) for job in jobs for _ in range(2)), "same ids, twice"
    work = [item.decode() for item in names.redis.lrange(f"{names.tag}:work", 0, -1)]
    assert sorted(work) == sorted(f"{job.pk}:{n}" for n, job in enumerate(jobs)), "the work ran once per job"
    assert set(Job.objects.values_list("attempts", flat=True)) == {2}  # the lost attempt counted
    assert "worker lost" in first.output() + second.output()


def test_a_message_rabbitmq_refuses_fails_the_publish(names):
    """Publisher confirms: a queue that rejects what overflows it nacks the third message."""
    from doctorjob.models import new_job
    from doctorjob.relays import KombuRelay, PublishRefused

    with Connection(AMQP) as conn:
        channel = conn.channel()
        exchange = Exchange(names.tag, type="direct", durable=True)(channel)
        exchange.declare()
        arguments = {"x-max-length": 2, "x-overflow": "reject-publish"}
        queue = Queue(names.tag, exchange=exchange, routing_key="full", queue_arguments=arguments)(channel)
        queue.declare()
        relay = KombuRelay(AMQP, names.tag)
        try:
            jobs = [new_job(id=n, name="tests.relay.any", queue="full", payload={"n": n}) for n in range(3)]
            with pytest.raises(PublishRefused, match="refused"):
                relay.publish(jobs)
            queue.purge()
            relay.publish(jobs[:2])  # a new channel, confirms counted afresh
            assert queue.queue_declare(passive=True).message_count == 2
        finally:
            relay.close()
            queue.delete()
            exchange.delete()


def test_run_jobs_relay_refuses_options_that_concern_handlers(names):
    done = subprocess.run(
        [sys.executable, "-m", "django", "run_jobs", "--relay", "--concurrency", "2"],
        cwd=ROOT,
        env={**worker_env(), **names.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--concurrency does not apply to --relay: a relay runs no handler" in done.stderr
