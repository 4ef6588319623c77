"""The worker survives the database dropping its connections: it logs it, reconnects and
loses nothing."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from doctorjob import enqueue_many
from doctorjob.models import Job, Status

from .helpers import statuses, wait_for, worker_database_url


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (pg_terminate_backend)")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("conn_max_age", [0, 60], ids=["connection-per-job", "persistent-connections"])
def test_worker_reconnects_after_its_connections_are_terminated_and_loses_nothing(workers, tmp_path, conn_max_age):
    # One handler thread: the one whose connection is terminated is the one that runs the later jobs.
    worker = workers(
        "--concurrency",
        "1",
        "--poll-interval",
        "0.2",
        database_url=f"{worker_database_url()}?conn_max_age={conn_max_age}",
    )
    payload = {"dupes": str(tmp_path / "dupes")}
    with transaction.atomic():
        before = enqueue_many([("tests.record_run", payload)] * 4)
    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == len(before), message="the first jobs to succeed"
    )  # so the handler thread has connected

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert len(cursor.fetchall()) >= 1
    wait_for(
        lambda: "database unavailable" in worker.output(),
        message=lambda: f"the worker to notice:\n{worker.output()[-3000:]}",
    )

    with transaction.atomic():
        after = enqueue_many([("tests.record_run", payload)] * 4)
    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == len(before) + len(after),
        timeout=30,
        message=lambda: f"the later jobs to succeed: {statuses()}\n{worker.output()[-3000:]}",
    )
    assert worker.alive()
    # Nothing lost, nothing failed for want of a connection.
    assert set(Job.objects.filter(pk__in=[j.pk for j in after]).values_list("attempts", flat=True)) == {1}
    assert worker.stop() == 0
