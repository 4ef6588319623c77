"""The context object handed to handlers as their second argument."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

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

    @cached_property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The doctorjob logger, with the job's id and name on every line."""
        return JobLogger(logger, {"job_id": self.job_id, "job_name": self.name, "attempt": self.attempt})

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now is final: the job is dead-lettered rather than retried."""
        return self.attempt >= self.max_attempts


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
