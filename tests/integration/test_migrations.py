"""Upgrading: migration 0004 records the ticks the schedules already enqueued, so that an
upgrade never runs again a tick whose job retention already pruned."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])


def migrate(target: str | None):
    """Migrate doctorjob to ``target``, or to its latest migration; the models as they were then."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    targets = [("doctorjob", target)] if target else executor.loader.graph.leaf_nodes("doctorjob")
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_the_upgrade_records_each_schedules_last_tick_from_its_jobs_or_the_latest_due_tick():
    old = migrate("0003_job_counters_without_checks")
    try:
        Definition, Job = old.get_model("doctorjob", "JobDefinition"), old.get_model("doctorjob", "Job")
        Definition.objects.create(name="up.with_job", schedule="0 * * * *")
        Definition.objects.create(name="up.pruned", schedule="0 0 1 * *")  # monthly; its job pruned
        Definition.objects.create(name="up.unscheduled")
        Job.objects.create(name="up.with_job", key="schedule:up.with_job:2024-01-01T10:00:00+00:00")
        Job.objects.create(name="up.with_job", key="schedule:up.with_job:2024-01-01T11:00:00+00:00")
    finally:
        new = migrate(None)
    ticks = dict(new.get_model("doctorjob", "JobDefinition").objects.values_list("name", "last_tick"))
    assert ticks["up.with_job"] == datetime(2024, 1, 1, 11, tzinfo=UTC)
    now = datetime.now(UTC)
    assert ticks["up.pruned"] == datetime(now.year, now.month, 1, tzinfo=UTC)
    assert ticks["up.unscheduled"] is None
