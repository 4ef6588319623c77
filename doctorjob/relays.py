"""The outbox relay: publish committed jobs to an external broker (Celery, RabbitMQ, Redis).

A job is written in the caller's transaction as any other; a relay process (``run_jobs
--relay``) claims the committed ones with the workers' claim, publishes them, and records them
``relayed`` through the workers' fenced finish. So the broker never sees a job whose transaction
rolled back and never misses one that committed. Delivery is at least once: a relay that dies
between the broker's confirmation and its own write publishes the job again, with the same id,
once its lease ran out; consumers deduplicate on that id (the Celery task id, the AMQP
``message_id``).

Which jobs: those of ``@job(relay=name)`` and every job of a relay's ``QUEUES``
(``DOCTORJOB["RELAYS"]``). Plain workers never claim them (``leases.Relayed``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import Any

from django.db import InterfaceError, OperationalError, connections, router
from django.utils.module_loading import import_string

from . import definitions, leases
from .conf import out_of_range, settings
from .db import close_quietly, database_now, not_migrated
from .exceptions import DoctorJobError, NotMigrated
from .leases import RELEASED, Finish
from .maintenance import Maintenance
from .models import Job
from .models import Worker as WorkerRow
from .payloads import storable_text
from .registry import registry
from .signals import RELAYED, SKIPPED, job_finished, send_robust

logger = logging.getLogger("doctorjob")

UNAVAILABLE_PAUSE = (1.0, 30.0)  # the relay's backoff while its broker is unreachable: first, longest


class RelayUnavailable(DoctorJobError):
    """The broker cannot be reached: the batch stays queued, no attempt is counted, the relay
    backs off and tries again."""


class Relay:
    """Publishes jobs to a broker. Subclass it and implement ``publish``; ``DOCTORJOB["RELAYS"]``
    builds it as ``Backend(**OPTIONS)``, so take the options as keyword arguments."""

    #: The relay's name in DOCTORJOB["RELAYS"], set when it is built from the settings.
    name: str = ""

    def publish(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` (in enqueue order) to the broker; return once the broker has them all.

        Raise ``RelayUnavailable`` when the broker cannot be reached (nothing is counted), any
        other exception when the jobs cannot be published (an attempt each, retried with the
        job's backoff, dead-lettered after ``max_attempts``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement publish(jobs)")

    def close(self) -> None:
        """Release connections; called when the relay process stops."""

    @staticmethod
    def task_name(job: Job) -> str:
        """The name the job is published under: its ``@job(task=...)``, or its own name."""
        job_type = registry.get(job.name)
        return (job_type.task if job_type else None) or job.name


class CeleryRelay(Relay):
    """Send each job as a Celery task: ``app.send_task(task, kwargs=payload, task_id=str(job.id))``.

    ``app`` is the dotted path of the Celery application (``"proj.celery.app"``); ``queue`` the
    Celery queue (default: the app's routing)."""

    def __init__(self, app: str, queue: str | None = None) -> None:
        if not isinstance(app, str) or not app:
            raise TypeError(f"CeleryRelay app must be the dotted path of a Celery app, got {app!r}")
        self.app_path, self.queue = app, queue
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            self._app = import_string(self.app_path)
        return self._app

    def publish(self, jobs: Sequence[Job]) -> None:
        app = self.app
        for job in jobs:
            if not isinstance(job.payload, dict):
                raise TypeError(
                    f"job {job.id}: a Celery task gets the payload as keyword arguments, so it must be "
                    f"a JSON object, got {type(job.payload).__name__}"
                )
        try:
            with app.producer_or_acquire() as producer:
                for job in jobs:
                    # retry=False: the relay backs off itself, with the batch still queued.
                    app.send_task(
                        self.task_name(job),
                        kwargs=job.payload,
                        task_id=str(job.id),
                        queue=self.queue,
                        producer=producer,
                        retry=False,
                    )
        except _connection_errors(app.connection_for_write()) as exc:
            raise RelayUnavailable(f"Celery broker unreachable: {exc}") from exc


class KombuRelay(Relay):
    """Publish each job as a JSON message through kombu, to RabbitMQ or Redis.

    The body is ``{"id", "name", "queue", "payload"}`` with ``message_id=str(job.id)``, routed by
    ``routing_key`` (default: the job's queue). The exchange is declared durable if missing;
    queues are never declared (bind yours to the exchange). On RabbitMQ (AMQP) the channel is in
    publisher-confirm mode: a batch is sent, then every message's confirm awaited at once (one
    round trip a batch, not one a message), and a nack fails the publish."""

    CONFIRM_TIMEOUT = 30.0  # seconds the broker may take to confirm a batch before it counts as away

    def __init__(self, url: str, exchange: str, exchange_type: str = "direct", routing_key: str | None = None) -> None:
        for option, value in (("url", url), ("exchange", exchange), ("exchange_type", exchange_type)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"KombuRelay {option} must be a non-empty string, got {value!r}")
        self.url, self.exchange, self.exchange_type, self.routing_key = url, exchange, exchange_type, routing_key
        self._connection: Any = None
        self._producer: Any = None
        # Publisher confirms (AMQP): the delivery tag of the last message sent on the channel,
        # the highest tag the broker confirmed, and whether it refused any.
        self._sent = self._confirmed = 0
        self._nacked = False

    def _open(self) -> Any:
        kombu: Any = import_module("kombu")
        connection = kombu.Connection(self.url, connect_timeout=5)
        self._connection = connection
        connection.ensure_connection(max_retries=1)
        channel = connection.channel()
        if connection.transport.driver_type == "amqp":
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._sent = self._confirmed = 0
            self._nacked = False
        exchange = kombu.Exchange(self.exchange, type=self.exchange_type, durable=True)
        exchange.declare(channel=channel)
        self._producer = kombu.Producer(channel, exchange=exchange)
        return self._producer

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed = max(self._confirmed, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked = True
        self._confirmed = max(self._confirmed, delivery_tag)

    def publish(self, jobs: Sequence[Job]) -> None:
        kombu: Any = import_module("kombu")
        errors = _connection_errors(self._connection or kombu.Connection(self.url))
        try:
            producer = self._producer or self._open()
            confirming = self._connection.transport.driver_type == "amqp"
            for job in jobs:
                body = {"id": job.id, "name": job.name, "queue": job.queue, "payload": job.payload}
                producer.publish(
                    json.dumps(body, separators=(",", ":")),
                    routing_key=self.routing_key or job.queue,
                    message_id=str(job.id),
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,  # persistent
                    retry=False,
                )
                self._sent += confirming
            if confirming:
                self._await_confirms()
        except errors as exc:
            self.close()
            raise RelayUnavailable(f"broker unreachable at {_safe_url(self.url)}: {exc}") from exc
        except BaseException:
            self.close()  # a channel error (an exchange of another type) closes the channel
            raise

    def _await_confirms(self) -> None:
        deadline = time.monotonic() + self.CONFIRM_TIMEOUT
        while self._confirmed < self._sent:
            left = deadline - time.monotonic()
            if left <= 0:
                # An OSError: the broker counts as unreachable, the batch stays queued uncounted.
                raise TimeoutError(f"the broker confirmed no message for {self.CONFIRM_TIMEOUT:g} s")
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:  # socket.timeout: nothing yet, wait on
                continue
        if self._nacked:
            self._nacked = False
            raise PublishRefused(f"the broker refused (nacked) messages of this batch at {_safe_url(self.url)}")

    def close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


class PublishRefused(DoctorJobError):
    """The broker refused messages it received (an AMQP nack): the publish failed."""


def _connection_errors(connection: Any) -> tuple[type[BaseException], ...]:
    """What a kombu connection raises when the broker is away (socket errors, and kombu's own
    OperationalError, which wraps the transport's connection errors, included)."""
    from kombu.exceptions import OperationalError as BrokerError

    return (OSError, BrokerError, *connection.connection_errors)


def _safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


# -- configuration ------------------------------------------------------------------------------


def relayed() -> leases.Relayed:
    """The jobs relays publish, for every claim to tell them apart: the names of ``@job(relay=...)``
    jobs and the queues of ``DOCTORJOB["RELAYS"]``."""
    names = sorted(name for name, job_type in registry.items() if job_type.relay)
    queues = sorted({queue for config in _configs().values() for queue in config.get("QUEUES") or ()})
    return leases.Relayed(names, queues)


def _configs() -> dict[str, dict[str, Any]]:
    configured = settings.RELAYS
    return configured if isinstance(configured, dict) else {}


def build(name: str) -> Relay:
    """The relay ``name`` of ``DOCTORJOB["RELAYS"]``: ``Backend(**OPTIONS)``."""
    config = _configs()[name]
    backend = import_string(config["BACKEND"])
    relay: Relay = backend(**(config.get("OPTIONS") or {}))
    relay.name = name
    return relay


def route(job: Job) -> str | None:
    """The relay that publishes ``job``: its ``@job(relay=...)``, else the relay of its queue."""
    job_type = registry.get(job.name)
    if job_type is not None and job_type.relay:
        return job_type.relay
    for name, config in _configs().items():
        if job.queue in (config.get("QUEUES") or ()):
            return name
    return None


# -- the relay process ----------------------------------------------------------------------------


class RelayWorker:
    """Claim committed relay jobs in batches, publish them, record them relayed; until stopped
    (or, in burst mode, until none is due). Takes part in the maintenance election as workers do,
    so that a relay alone still rescues the jobs of a relay that died (the lease sweep)."""

    def __init__(
        self,
        *,
        queues: Sequence[str] | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease: float | None = None,
        burst: bool = False,
        using: str | None = None,
        relays: Mapping[str, Relay] | None = None,
    ) -> None:
        self.queues = list(queues) if queues else None
        self.batch_size = settings.BATCH_SIZE if batch_size is None else batch_size
        self.poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
        self.lease = settings.LEASE if lease is None else lease
        for option, value in (
            ("BATCH_SIZE", self.batch_size),
            ("POLL_INTERVAL", self.poll_interval),
            ("LEASE", self.lease),
        ):
            if problem := out_of_range(option, value):
                raise ValueError(f"{option.lower()} {problem}")
        self.burst = burst
        self.alias = using or router.db_for_write(Job)
        self.id = f"{socket.gethostname()}:{os.getpid()}:relay:{secrets.token_hex(3)}"
        self.relays = dict(relays) if relays is not None else {name: build(name) for name in _configs()}
        self.relayed = relayed()
        self.published = 0
        self._stopping = threading.Event()
        self._unavailable = 0  # batches in a row the broker refused
        self._heartbeat_due = 0.0
        self.maintenance = Maintenance(self.alias, self.id, self.lease, self._stopping, _finished)

    def stop(self, *, now: bool = False) -> None:
        """Stop after the batch being published (``now``: the same; a batch is short)."""
        self._stopping.set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._start_up()
                break
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                self._pause(f"database unavailable: {exc}", failures)
        else:
            return
        self.maintenance.start()
        logger.info(
            "relay started worker=%s relays=%s queues=%s batch_size=%s lease=%ss poll=%ss",
            self.id,
            ",".join(self.relays) or "-",
            ",".join(self.queues) if self.queues else "*",
            self.batch_size,
            self.lease,
            self.poll_interval,
        )
        try:
            self._loop()
        finally:
            self._stopping.set()
            self.maintenance.join(self.lease + 10)
            for relay in self.relays.values():
                relay.close()
            try:
                WorkerRow.objects.using(self.alias).filter(name=self.id).delete()
            except (OperationalError, InterfaceError) as exc:
                logger.warning("could not remove worker row worker=%s: %s", self.id, exc)
            connections[self.alias].close()
        logger.info("relay stopped worker=%s published=%s", self.id, self.published)

    def _start_up(self) -> None:
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            tables = set(connection.introspection.table_names(cursor))
        if not {"doctorjob_job", "doctorjob_maintenancelease"} <= tables:
            raise NotMigrated(not_migrated(self.alias))
        for change in definitions.sync(self.alias):
            logger.info("definition %s", change)
        self._heartbeat()
        self.maintenance.run_due(prune=False)

    def _heartbeat(self) -> None:
        now = database_now(connections[self.alias])
        WorkerRow.objects.using(self.alias).update_or_create(
            name=self.id,
            defaults=dict(
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(self.queues or []),
                concurrency=1,
                lease=self.lease,
                last_heartbeat=now,
                lost=False,
            ),
            create_defaults=dict(
                name=self.id,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(self.queues or []),
                concurrency=1,
                lease=self.lease,
                started_at=now,
                last_heartbeat=now,
            ),
        )
        self._heartbeat_due = time.monotonic() + self.lease / 3

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= self._heartbeat_due:
                    self._heartbeat()
                picked, full = self.relay_once()
                failures = 0
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                self._pause(f"database unavailable: {exc}", failures)
                continue
            if self._unavailable:
                self._pause(None, self._unavailable)
                continue
            if self.burst and not picked:
                return
            if not full:
                self._stopping.wait(self.poll_interval)

    def relay_once(self) -> tuple[int, bool]:
        """Claim one batch of relay jobs and publish it; returns (rows picked, whether the batch
        was full)."""
        claim = leases.claim(
            self.alias,
            worker=self.id,
            limit=self.batch_size,
            lease=self.lease,
            queues=self.queues,
            relayed=self.relayed,
            relay=True,
        )
        for job in claim.skipped:
            send_robust(job_finished, job=job, outcome=SKIPPED, duration=None)
        if claim.jobs:
            self._publish(claim.jobs)
        return claim.picked, claim.picked == self.batch_size

    def _publish(self, jobs: Sequence[Job]) -> None:
        """Publish each relay's jobs in claim order, then record every outcome in one statement."""
        batches: dict[str | None, list[Job]] = {}
        for job in jobs:
            batches.setdefault(route(job), []).append(job)
        outcomes: list[Finish] = []
        unavailable = False
        for name, batch in batches.items():
            relay = self.relays.get(name) if name else None
            started = time.monotonic()
            try:
                if relay is None:
                    raise LookupError(f"no relay named {name!r} in DOCTORJOB['RELAYS'] for job '{batch[0].name}'")
                relay.publish(batch)
            except RelayUnavailable as exc:
                unavailable = True
                outcomes += [Finish(job, RELEASED, worker=self.id) for job in batch]
                logger.warning(
                    "relay unavailable relay=%s jobs=%s retry_in=%.1fs error=%s",
                    name,
                    len(batch),
                    _pause_for(self._unavailable + 1),
                    exc,
                )
            except Exception as exc:  # noqa: BLE001 - counted on the jobs, the relay keeps running
                error = storable_text(f"{type(exc).__name__}: {exc}")[:10_000]
                tb = storable_text("".join(traceback.format_exception(exc)))
                logger.warning("relay publish failed relay=%s jobs=%s error=%s", name, len(batch), error)
                outcomes += [
                    leases.failed(job, leases.retry_or_dead(job), error, worker=self.id, traceback=tb) for job in batch
                ]
            else:
                duration = (time.monotonic() - started) / len(batch)
                outcomes += [Finish(job, RELAYED, worker=self.id, duration=duration) for job in batch]
        self._unavailable = self._unavailable + 1 if unavailable else 0
        done = leases.finish(self.alias, outcomes)
        self.published += sum(1 for f in done if f.outcome == RELAYED)
        _finished([f for f in done if f.outcome != RELEASED])

    def _pause(self, reason: str | None, failures: int) -> None:
        pause = _pause_for(failures)
        if reason:
            logger.warning("%s, retrying in %.1fs", reason, pause)
            close_quietly(self.alias)
        self._stopping.wait(pause)


def _pause_for(failures: int) -> float:
    first, longest = UNAVAILABLE_PAUSE
    return float(min(first * 2 ** (failures - 1), longest))


def _finished(finished: Sequence[Finish]) -> None:
    for f in finished:
        send_robust(job_finished, job=f.job, outcome=f.outcome, duration=f.duration)
