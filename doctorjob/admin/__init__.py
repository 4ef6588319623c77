"""A read-only admin for jobs and dead letters whose state changes are explicit POST actions:
retry, cancel and purge jobs, requeue dead letters (optionally with a corrected payload), pause
and resume. The actions work on whatever a filter matches ("select all"), through
``operations``; the dashboard is in ``dashboard.py``, list performance in ``changelists.py``,
how values look in ``display.py``. Importing this package registers every ModelAdmin."""

from .base import ReadOnlyAdmin
from .dead_letters import DeadLetterAdmin, RequeuedFilter, RequeueForm
from .definitions import JobDefinitionAdmin, JobVersionInline, QueueStateAdmin
from .jobs import JobAdmin, JobExecutionInline
from .workers import WorkerAdmin

__all__ = [
    "DeadLetterAdmin",
    "JobAdmin",
    "JobDefinitionAdmin",
    "JobExecutionInline",
    "JobVersionInline",
    "QueueStateAdmin",
    "ReadOnlyAdmin",
    "RequeueForm",
    "RequeuedFilter",
    "WorkerAdmin",
]
