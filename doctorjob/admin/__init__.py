"""A read-only admin for jobs and dead letters whose state changes are explicit POST actions:
retry, cancel and purge jobs, requeue dead letters (optionally with a corrected payload), pause
and resume. The actions work on whatever a filter matches ("select all"), through
``operations``; the dashboard is in ``dashboard.py``, list performance in ``changelists.py``,
how values look in ``display.py``."""

from . import dead_letters, definitions, jobs, workers  # noqa: F401  (each registers its ModelAdmins)
