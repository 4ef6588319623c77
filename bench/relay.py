"""The relay measures: ``run_jobs --relay`` publishing the scratch database's jobs to a real
broker, Redis (through Celery and through kombu) and RabbitMQ (kombu), in relayed jobs/s.

Each target is a relay configuration handed to the worker process (``$DOCTORJOB_BENCH_RELAYS``)
and a queue of the bench's own on the broker, declared before and deleted after, whose message
count proves every job arrived."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

RELAYS_ENV = "DOCTORJOB_BENCH_RELAYS"
CELERY_BROKER_ENV = "DOCTORJOB_BENCH_CELERY_BROKER"
QUEUE = "doctorjob-bench-relay"  # the jobs' queue, the relay's QUEUES, the routing key


@dataclass(frozen=True)
class Target:
    """One broker the relay publishes to."""

    key: str  # relay/<name>
    label: str
    url: str
    backend: str  # "kombu" or "celery"

    @property
    def name(self) -> str:
        return f"{QUEUE}-{os.getpid()}"  # the broker-side exchange and queue: this run's own

    def relays(self) -> dict[str, Any]:
        """DOCTORJOB["RELAYS"] for the worker process."""
        if self.backend == "celery":
            options: dict[str, Any] = {"app": "bench.celery_app.app", "queue": self.name}
            return {"bench": {"BACKEND": "doctorjob.relays.CeleryRelay", "OPTIONS": options, "QUEUES": [QUEUE]}}
        options = {"url": self.url, "exchange": self.name}
        return {"bench": {"BACKEND": "doctorjob.relays.KombuRelay", "OPTIONS": options, "QUEUES": [QUEUE]}}

    def env(self) -> dict[str, str]:
        import json

        return {RELAYS_ENV: json.dumps(self.relays()), CELERY_BROKER_ENV: self.url}

    def declare(self) -> None:
        """The queue the messages land in (the relay declares none), empty."""
        if self.backend == "celery":
            self._redis().delete(self.name)
            return
        with self._connection() as conn:
            queue = self._queue(conn)
            queue.declare()
            queue.purge()

    def count(self) -> int:
        """Messages waiting in the bench's queue."""
        if self.backend == "celery":
            return int(self._redis().llen(self.name))
        with self._connection() as conn:
            queue = self._queue(conn)
            if self.url.startswith("redis"):
                return int(conn.default_channel.client.llen(self.name))
            return int(queue.queue_declare(passive=True).message_count)

    def delete(self) -> None:
        """Leave nothing on the broker: on Redis every key naming the queue (the list, kombu's
        binding tables, which kombu's own queue deletion keeps), on RabbitMQ the queue and exchange."""
        if self.url.startswith("redis"):
            client = self._redis()
            for key in client.scan_iter(f"*{self.name}*"):
                client.delete(key)
            return
        with self._connection() as conn:
            queue = self._queue(conn)
            queue.delete()
            queue.exchange.delete()

    def _connection(self) -> Any:
        from kombu import Connection

        return Connection(self.url, connect_timeout=5)

    def _queue(self, conn: Any) -> Any:
        from kombu import Exchange, Queue

        exchange = Exchange(self.name, type="direct", durable=True)
        return Queue(self.name, exchange=exchange, routing_key=QUEUE, durable=True)(conn.default_channel)

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


def targets(redis_url: str | None, amqp_url: str | None) -> tuple[list[Target], list[str]]:
    """The brokers to measure, and why others are left out (for the report's notes)."""
    found, notes = [], []
    try:
        import celery  # noqa: F401
        import kombu  # noqa: F401
    except ImportError:
        return [], ["relay: not measured, the relay extra is not installed (pip install 'doctorjob[relay]')"]
    for url, wanted in (
        (
            redis_url,
            [("relay/celery-redis", "Celery, Redis", "celery"), ("relay/kombu-redis", "kombu, Redis", "kombu")],
        ),
        (amqp_url, [("relay/kombu-rabbitmq", "kombu, RabbitMQ", "kombu")]),
    ):
        if not url:
            continue
        parts = urlsplit(url)
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=3).close()
        except OSError as exc:
            notes.append(f"relay to {parts.hostname}:{parts.port} not measured: the broker is unreachable ({exc})")
            continue
        found += [Target(key, label, url, backend) for key, label, backend in wanted]
    return found, notes
