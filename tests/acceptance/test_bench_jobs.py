"""The bench, ``python -m bench`` from the root of a checkout, end to end on a small scale: it must
keep working from a clean clone, since its figures are what docs/performance.md reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.db import connection

from .helpers import ROOT, worker_env

QUICK_RESULTS = [
    "enqueue/doctorjob",
    "enqueue/doctorjob-no-notify",
    "enqueue/raw",
    "bulk/doctorjob",
    "bulk/raw",
    "drain/doctorjob/1",
    "drain/raw/1",
    "drain/doctorjob/2",
    "drain/raw/2",
]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the checkout's root, as docs/benchmark.md runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (the bench runs there only)")
@pytest.mark.django_db
def test_quick_run_measures_everything_against_raw_sql_and_drops_its_scratch_database(tmp_path):
    saved = tmp_path / "bench.json"

    done = bench("--quick", "--json", str(saved))

    assert done.returncode == 0, done.stderr
    report = done.stdout
    header = report.splitlines()[0]
    assert header.startswith("doctorjob bench — ") and header.endswith(f" — python -m bench --quick --json {saved}")
    for line in (
        "enqueue() one job per transaction",
        "enqueue_many()",
        "drain 2,000 no-op jobs, 2 processes",
        "doctorjob, NOTIFY",
        "raw SQL, LISTEN/NOTIFY",
        "worker memory",
    ):
        assert line in report
    results = json.loads(saved.read_text())["results"]
    assert all(results[name]["rate"] > 0 for name in QUICK_RESULTS), results
    assert not any(results[name].get("capped") for name in QUICK_RESULTS if name.startswith("drain/"))
    assert results["latency/doctorjob/notify"]["probes"] == 30
    scratch = f"{connection.settings_dict['NAME']}_bench"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch])
        assert cursor.fetchone()[0] == 0, f"{scratch} was left behind"


@pytest.mark.django_db
def test_refuses_a_database_other_than_postgresql_and_bad_options():
    if connection.vendor != "postgresql":
        done = bench("--quick")
        assert done.returncode == 1
        assert f"the bench runs on PostgreSQL only; database alias 'default' is {connection.vendor}" in done.stderr
    done = bench("--processes", "0")
    assert done.returncode == 2
    assert "--processes: must be at least 1, got 0" in done.stderr
