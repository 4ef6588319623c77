"""Measure doctorjob against a raw-SQL psycopg baseline: the library behind ``manage.py bench_jobs``.

Everything happens in a scratch database created on the project's PostgreSQL server
(``<name>_bench``) and dropped at the end, so the project's own jobs are never touched and no
running worker of the project hears the bench's NOTIFYs (channels are per database).

doctorjob's workers are real ``run_jobs`` commands, each in its own process started as
``python -m doctorjob.benchmark worker``; the baseline is a plain table drained by a short
psycopg loop (``python -m doctorjob.benchmark raw-worker``). Only the bench imports this module,
and it registers its two job handlers explicitly (``register_jobs()``), so they never exist in
a normal project.
"""
from .options import QUICK, BenchmarkError, Options
from .report import format_report
from .runner import run

__all__ = ["QUICK", "BenchmarkError", "Options", "format_report", "run"]
