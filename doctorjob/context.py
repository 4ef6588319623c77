"""The context object handed to handlers as their second argument."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Job

logger = logging.getLogger("doctorjob")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.logger``: the doctorjob logger with the job's id and name on every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[job_id={extra['job_id']} name={extra['job_name']}] {msg}", kwargs


@dataclass(eq=False)
class JobContext:
    """What a handler knows about the attempt it runs: one object per attempt, equal only to
    itself (and so hashable). Not frozen: a worker makes one for every job, and a frozen
    dataclass costs several times as much to build (2.5 µs instead of 0.4 here)."""

    #: The job's primary key (0 in ``doctorjob.testing.perform()``, where there is no row).
    job_id: int
    #: The registered job name.
    name: str
    #: The queue it was claimed from.
    queue: str
    #: This attempt's number: 1 for the first run.
    attempt: int
    #: Attempts before the job is dead-lettered, the first run included.
    max_attempts: int
    #: Its idempotency key, if it was enqueued with one.
    key: str | None = None
    #: When it was enqueued (the enqueuing host's clock).
    enqueued_at: datetime | None = None
    #: The worker running it (host, pid and a random suffix).
    worker: str = ""
    #: The database alias the job lives in (and ``ctx.enqueue()`` writes to).
    using: str = "default"
    #: This attempt's lease: the fencing token its writes (``save_progress()``) match on.
    lease_id: uuid.UUID | None = None
    _progress: Any = None  # as an earlier attempt left it
    _side: Any = field(default=None, repr=False)  # the connection save_progress() writes on
    _sink: Any = None  # doctorjob.testing: saved progress goes there instead, written after the attempt

    @cached_property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The doctorjob logger, with the job's id and name on every line."""
        return JobLogger(logger, {"job_id": self.job_id, "job_name": self.name, "attempt": self.attempt})

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now is final: the job is dead-lettered rather than retried."""
        return self.attempt >= self.max_attempts

    def enqueue(self, job: Any, payload: Any = None, *, children: Iterable[Any] = (), **options: Any) -> Job:
        """Enqueue a job (a root of its own tree) on this handler's connection: for an
        ``atomic=True`` job, in the transaction that records its success, so that a failed
        attempt enqueues nothing."""
        from .outbox import enqueue

        return enqueue(job, payload, children=children, using=self.using, **options)

    def children_results(self) -> dict[str, Any]:
        """``{str(child id): result}`` for this job's children that succeeded."""
        from .trees import children_results

        return children_results(self.using, self.job_id)

    def failed_children(self) -> dict[str, str]:
        """``{str(child id): error}`` for this job's children that are dead or were cancelled
        (those linked with ``on_failure="ignore"``; the others fail the parent or are removed)."""
        from .trees import failed_children

        return failed_children(self.using, self.job_id)

    def recover_progress(self) -> Any:
        """What an earlier attempt of this job last passed to ``save_progress()``; None on the
        first attempt."""
        return self._progress

    def save_progress(self, value: Any) -> None:
        """Store ``value`` (JSON) as this job's progress now, committed whatever becomes of the
        attempt: a later attempt reads it with ``recover_progress()`` and carries on from there.

        Inside a transaction (an ``atomic=True`` job) it is written on a connection of its own,
        so that a rollback keeps it. On SQLite that connection waits for the handler's
        transaction if that has written already: save progress before the first write there.
        """
        from django.db import connections

        from .models import Job
        from .payloads import check_json

        check_json(value, self.name, "progress")
        if self._sink is not None:
            self._sink(self.job_id, value)
            return
        connection = connections[self.using]
        if connection.in_atomic_block:
            if self._side is None:
                self._side = connections.create_connection(self.using)
            connection = self._side
        progress, lease_id = Job._meta.get_field("progress"), Job._meta.get_field("lease_id")
        with connection.cursor() as cursor:
            # Fenced like every write of the worker: only while this attempt holds the job.
            cursor.execute(
                "UPDATE doctorjob_job SET progress = %s WHERE id = %s AND lease_id = %s AND status = 'running'",
                [
                    progress.get_db_prep_save(value, connection),
                    self.job_id,
                    lease_id.get_db_prep_value(self.lease_id, connection),
                ],
            )

    def close(self) -> None:
        """Close the connection ``save_progress()`` opened, if any (the worker calls this)."""
        if self._side is not None:
            self._side.close()
            self._side = None


_current = threading.local()


def set_current_job(ctx: JobContext | None, version: int = 1) -> None:
    """Mark which job this thread is running, for the log record factory."""
    _current.job = (ctx, version) if ctx is not None else None


def install_log_record_factory() -> None:
    """Give every LogRecord created while a handler runs ``job_id``, ``job_name``, ``attempt``
    and ``job_version``, whoever logs it (the handler, a library it calls, Django)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "doctorjob", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        current = getattr(_current, "job", None)
        if current is not None:
            ctx, version = current
            record.job_id, record.job_name, record.attempt, record.job_version = (
                ctx.job_id,
                ctx.name,
                ctx.attempt,
                version,
            )
        else:  # formatters using %(job_id)s work on every line
            record.job_id = record.job_name = record.attempt = record.job_version = None
        return record

    factory.doctorjob = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
