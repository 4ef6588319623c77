"""Measure doctorjob against a raw-SQL psycopg baseline: ``python -m bench`` from a checkout.

The harness is not part of the installed package: it lives next to ``doctorjob/`` in the
repository and runs from there (``python -m bench --help``).

Everything happens in a scratch database created on the project's PostgreSQL server
(``<name>_bench``) and dropped at the end, so the project's own jobs are never touched and no
running worker of the project hears the bench's NOTIFYs (channels are per database).

doctorjob's workers are real ``run_jobs`` commands, each in its own process started as
``python -m bench worker``; the baseline is a plain table drained by a short psycopg loop
(``python -m bench raw-worker``). The bench registers its two job handlers explicitly
(``register_jobs()``), so they never exist in a normal project.
"""

from .options import QUICK, BenchmarkError, Options
from .report import format_report
from .runner import run

__all__ = ["QUICK", "BenchmarkError", "Options", "format_report", "run"]
