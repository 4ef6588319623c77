"""Errors doctorjob raises; catch `DoctorJobError` to handle them all."""

from __future__ import annotations


class DoctorJobError(Exception):
    """Base class of every doctorjob error."""


class UnknownJob(DoctorJobError, LookupError):
    """`enqueue()` was given a job name that no `@job` registered."""


class InvalidPayload(DoctorJobError, ValueError):
    """The payload is not JSON or does not match the job's schema."""


class InvalidEnqueue(DoctorJobError, ValueError):
    """An option of `enqueue()` (delay, run_at, priority, ...) is invalid."""


class TransactionRequired(DoctorJobError):
    """`enqueue()` ran in autocommit mode while REQUIRE_TRANSACTION is on."""


class NotMigrated(DoctorJobError):
    """doctorjob's tables are missing from the database: run ``manage.py migrate``."""


class PermanentError(DoctorJobError):
    """Raised by a handler: the job will not succeed on retry, dead-letter it now."""


class LeaseLost(DoctorJobError):
    """The worker no longer owns the job: another worker took it over after its lease ran out."""
