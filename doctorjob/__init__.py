"""doctorjob: transactional background jobs for Django.

Jobs are rows written in the caller's own transaction, so they commit with the data they
refer to or not at all; ``manage.py run_jobs`` drains them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import JobContext
from .exceptions import (
    DoctorJobError,
    InvalidEnqueue,
    InvalidPayload,
    NotMigrated,
    PermanentError,
    TransactionRequired,
    UnknownJob,
)
from .registry import job
from .retry import Backoff
from .trees import Child

if TYPE_CHECKING:
    from .outbox import enqueue, enqueue_many

__all__ = [
    "Backoff",
    "Child",
    "DoctorJobError",
    "InvalidEnqueue",
    "InvalidPayload",
    "JobContext",
    "NotMigrated",
    "PermanentError",
    "TransactionRequired",
    "UnknownJob",
    "enqueue",
    "enqueue_many",
    "job",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # enqueue needs the models; importing doctorjob (e.g. from a jobs.py) must not.
    if name in ("enqueue", "enqueue_many"):
        from . import outbox

        return getattr(outbox, name)
    raise AttributeError(f"module 'doctorjob' has no attribute {name!r}")
