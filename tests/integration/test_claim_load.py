"""The claim under load: 1,000 and then 100,000 runnable jobs, with 10,000 more due later. The
claim reads its ordered index at both sizes (never the whole backlog, never the future jobs),
so claiming a batch costs about the same. The times are printed for docs/reliability.md (run
with -s); speed itself is the benchmark's business, not an assertion here."""

from __future__ import annotations

import re
import statistics
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from doctorjob import db, enqueue_many, leases
from doctorjob.leases import RELEASED, Finish
from doctorjob.models import Job, Status

BATCH = 100
LATER = 10_000


def fill(count: int, **options) -> None:
    for start in range(0, count, 50_000):
        enqueue_many({"job": "tests.noop", **options} for _ in range(min(50_000, count - start)))


def claim_times(rounds: int = 30) -> list[float]:
    """Milliseconds per claim of BATCH jobs; each batch is released again, so the backlog stays."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        claimed = leases.claim(connection.alias, worker="load", limit=BATCH, lease=30.0)
        times.append((time.perf_counter() - started) * 1000)
        assert len(claimed.jobs) == BATCH
        leases.finish(connection.alias, [Finish(job, RELEASED) for job in claimed.jobs])
    return times


def claim_plan() -> str:
    explain = "EXPLAIN (ANALYZE, COSTS OFF) " + leases._CLAIM.format(filters="")
    rows = db.execute(connection, explain, [[], BATCH, uuid.uuid4(), "explain", 30.0], planner=leases._CLAIM_PLANNER)
    return "\n".join(row[0] for row in rows)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_claiming_a_batch_reads_the_claim_index_from_1k_to_100k_queued_jobs():
    fill(LATER, run_at=timezone.now() + timedelta(hours=1))
    figures = {}
    for queued in (1_000, 100_000):
        fill(queued - Job.objects.filter(status=Status.QUEUED, run_at__lte=timezone.now()).count())
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE doctorjob_job")
        plan = claim_plan()
        assert "Index Scan using doctorjob_job_claim_any" in plan, plan
        assert not re.search(r"Seq Scan on doctorjob_job\b", plan) and "Sort" not in plan, plan
        # The EXPLAIN ANALYZE above ran the claim: give its jobs back.
        Job.objects.filter(worker="explain").update(
            status=Status.QUEUED, attempts=0, worker="", lease_id=None, lease_expires_at=None, started_at=None
        )
        times = sorted(claim_times())
        figures[queued] = (statistics.median(times), times[int(len(times) * 0.95) - 1])
    print(
        "\nclaim of "
        + str(BATCH)
        + " jobs, "
        + f"{LATER:,} more due later: "
        + "; ".join(f"{queued:,} queued p50 {p50:.2f} ms p95 {p95:.2f} ms" for queued, (p50, p95) in figures.items())
    )
