"""The worker's lifecycle log lines, as receivers of doctorjob's own signals.

Per-job INFO lines (``claimed``, ``succeeded``, ``skipped``) carry ``doctorjob_per_job`` so that
``run_jobs -v 0`` can drop them whatever ``LOGGING`` says; retries and dead jobs always log.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from . import signals

logger = logging.getLogger("doctorjob")
PER_JOB = {"doctorjob_per_job": True}


def log_started(sender: Any, job: Any, **kwargs: Any) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info("claimed job_id=%s name=%s attempt=%s", job.pk, job.name, job.attempts, extra=PER_JOB)


def log_finished(sender: Any, job: Any, outcome: str, duration: float | None = None, **kwargs: Any) -> None:
    if outcome == signals.SUCCEEDED:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "succeeded job_id=%s name=%s attempt=%s duration=%.3fs",
                job.pk,
                job.name,
                job.attempts,
                duration or 0.0,
                extra=PER_JOB,
            )
    elif outcome == signals.RETRYING:
        logger.warning(
            "retrying job_id=%s name=%s attempt=%s next_run_at=%s error=%s",
            job.pk,
            job.name,
            job.attempts,
            # In settings.TIME_ZONE, to the second: the time the admin shows for this job.
            timezone.localtime(job.run_at).isoformat(timespec="seconds") if job.run_at else None,
            job.error,
        )
    elif outcome == signals.RELAYED:
        if logger.isEnabledFor(logging.INFO):
            logger.info("relayed job_id=%s name=%s attempt=%s", job.pk, job.name, job.attempts, extra=PER_JOB)
    elif outcome == signals.DEAD:
        logger.error("dead job_id=%s name=%s attempt=%s error=%s", job.pk, job.name, job.attempts, job.error)
    else:
        logger.info(
            "skipped job_id=%s name=%s attempt=%s reason=%s", job.pk, job.name, job.attempts, job.error, extra=PER_JOB
        )


class QuietPerJob(logging.Filter):
    """Drops the per-job INFO lines: ``run_jobs -v 0``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "doctorjob_per_job", False)


def connect() -> None:
    signals.job_started.connect(log_started, dispatch_uid="doctorjob.log_started")
    signals.job_finished.connect(log_finished, dispatch_uid="doctorjob.log_finished")


def configure_logging(verbosity: int) -> None:
    """For run_jobs and its watchdog: show the doctorjob logger at -v 1+, unless the project's
    LOGGING configured it."""
    log = logging.getLogger("doctorjob")
    if log.handlers or log.level != logging.NOTSET:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    log.propagate = False
