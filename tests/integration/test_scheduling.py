"""What runs when: cron ticks (seconds-first 6-field schedules, settings.TIME_ZONE and its
daylight-saving changes), each tick enqueued once, only the latest tick after downtime, schedule
changes and pauses; and jobs that must not overlap (singleton, concurrency_key, on_overlap).

The tick logic runs in-process with a fake clock: ``tick(at)`` is what the worker holding the
maintenance lease does a few times a second, at the time ``at``. Several real worker processes are in
tests/acceptance/test_overlap_and_schedules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.test.utils import override_settings

from doctorjob import definitions, enqueue, job, maintenance
from doctorjob.models import Job, JobDefinition, Status
from doctorjob.schedule import ScheduleError, latest_tick, tick_key, validate_schedule
from tests.testapp.jobs_issue4 import adhoc, extra_jobs, register_adhoc, restored_registry

from .factories import JobFactory

pytestmark = pytest.mark.django_db

# MySQL and MariaDB have no partial unique indexes, so nothing stops two running jobs with one key.
needs_partial_unique_index = pytest.mark.skipif(
    connection.vendor == "mysql",
    reason="MySQL/MariaDB cannot enforce singleton/concurrency_key (no partial unique index; doctorjob.W002)",
)
in_worker = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])

SCHEDULED = "issue4.scheduled"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def register():
    """``register(name, **options)`` registers a job for this test only."""
    with restored_registry():
        yield register_adhoc


@pytest.fixture
def paris(settings):
    settings.TIME_ZONE = "Europe/Paris"


@contextmanager
def clock(at: datetime) -> Iterator[None]:
    """Make it ``at`` for doctorjob (and Django) in this block."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


def tick(at: datetime) -> None:
    """What the worker holding the maintenance lease does a few times a second, at the time ``at``."""
    with clock(at):
        maintenance.enqueue_due_ticks("default", now=at)


def sync_at(at: datetime) -> list[str]:
    """Sync definitions as a worker starting at ``at`` does."""
    with clock(at):
        return definitions.sync()


def scheduled(name: str = SCHEDULED) -> list[str]:
    return list(Job.objects.filter(name=name).order_by("id").values_list("key", flat=True))


def key(at: datetime, name: str = SCHEDULED) -> str:
    return f"schedule:{name}:{at.isoformat()}"


# -- cron expressions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "now", "expected"),
    [
        ("*/5 * * * *", utc(2024, 1, 1, 12, 7, 30), utc(2024, 1, 1, 12, 5)),
        ("*/5 * * * *", utc(2024, 1, 1, 12, 5), utc(2024, 1, 1, 12, 5)),  # a tick due right now counts
        ("0 0 * * 1", utc(2024, 1, 3, 8), utc(2024, 1, 1)),  # Mondays at midnight; Jan 3 is a Wednesday
        ("*/15 * * * * *", utc(2024, 1, 1, 12, 0, 47, 500000), utc(2024, 1, 1, 12, 0, 45)),  # seconds first
        ("*/1 * * * * *", utc(2024, 1, 1, 12, 0, 47, 999999), utc(2024, 1, 1, 12, 0, 47)),
        ("30 9 * * * *", utc(2024, 1, 1, 12, 7), utc(2024, 1, 1, 11, 9, 30)),  # second 30 of minute 9, hourly
    ],
    ids=["5-fields", "on-the-tick", "weekly", "6-fields-every-15s", "6-fields-every-second", "6-fields-hourly"],
)
def test_latest_tick_is_the_last_time_at_or_before_now_that_the_schedule_matches(expression, now, expected):
    assert latest_tick(expression, now) == expected


def test_tick_key_is_the_tick_in_utc_to_the_second(paris):
    tick_at = latest_tick("*/1 * * * * *", utc(2024, 1, 1, 12, 0, 47, 250000))
    assert tick_key("x", tick_at) == "schedule:x:2024-01-01T12:00:47+00:00"


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * * *", "61 * * * *", "* * * * 8", "every day", ""])
def test_a_bad_cron_expression_is_refused_up_front(expression):
    with pytest.raises(ScheduleError):
        validate_schedule(expression)
    if expression:
        with restored_registry(), pytest.raises(ImproperlyConfigured, match="@job schedule"):
            job("issue4.bad_schedule", schedule=expression)(adhoc)


# -- settings.TIME_ZONE and daylight saving -----------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "now", "expected"),
    [
        ("0 9 * * *", utc(2024, 3, 30, 12), utc(2024, 3, 30, 8)),  # 9:00 in Paris, winter time (UTC+1)
        ("0 9 * * *", utc(2024, 4, 1, 12), utc(2024, 4, 1, 7)),  # still 9:00 in Paris, summer time (UTC+2)
        ("0 9 * * *", utc(2024, 10, 28, 12), utc(2024, 10, 28, 8)),  # back to winter time
        ("30 2 * * *", utc(2024, 3, 31, 1, 15), utc(2024, 3, 31, 1)),  # 02:30 never happens that night: 03:00
        ("0 * * * *", utc(2024, 3, 31, 1, 30), utc(2024, 3, 31, 1)),  # 03:00 summer time, right after 01:00 winter
    ],
    ids=["winter", "summer", "winter-again", "skipped-time", "hour-after-the-jump"],
)
def test_schedules_are_read_in_settings_time_zone_across_daylight_saving_changes(paris, expression, now, expected):
    assert in_utc(latest_tick(expression, now)) == expected


def in_utc(at: datetime) -> datetime:
    # A local time in the repeated hour (fold=1) never compares equal to a time in another
    # zone (PEP 495), and compares equal to its first-pass twin in its own zone: compare in UTC.
    return at.astimezone(UTC)


def ticks_seen(expression: str, start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    """The distinct ticks a worker looking every ``every`` from ``start`` to ``end`` would enqueue."""
    seen, now = [], start
    while now <= end:
        tick_at = in_utc(latest_tick(expression, now))
        if tick_at >= start and tick_at not in seen:
            seen.append(tick_at)
        now += every
    return seen


def test_a_half_hourly_schedule_ticks_every_half_hour_through_the_spring_change(paris):
    # 2024-03-31 in Paris: 02:00 winter time jumps to 03:00 summer time (01:00 UTC).
    seen = ticks_seen("*/30 * * * *", utc(2024, 3, 30, 23), utc(2024, 3, 31, 3), timedelta(minutes=5))
    assert seen == [utc(2024, 3, 30, 23) + timedelta(minutes=30 * i) for i in range(9)]


def test_a_half_hourly_schedule_ticks_every_half_hour_through_the_autumn_change(paris):
    # 2024-10-27 in Paris: 03:00 summer time goes back to 02:00 winter time (01:00 UTC).
    seen = ticks_seen("*/30 * * * *", utc(2024, 10, 26, 23), utc(2024, 10, 27, 3), timedelta(minutes=5))
    assert seen == [utc(2024, 10, 26, 23) + timedelta(minutes=30 * i) for i in range(9)]


def test_an_every_second_schedule_keeps_ticking_in_the_repeated_hour(paris):
    now = utc(2024, 10, 27, 1, 30, 10)  # 02:30:10 winter time, the second 02:30:10 that night
    assert in_utc(latest_tick("*/1 * * * * *", now)) == now


def test_a_worker_enqueues_each_hourly_tick_through_the_autumn_change(paris, register):
    register(SCHEDULED, schedule="0 * * * *")
    sync_at(utc(2024, 10, 26, 22, 30))
    now = utc(2024, 10, 26, 23)
    while now <= utc(2024, 10, 27, 3):
        tick(now)
        now += timedelta(minutes=10)

    assert scheduled() == [key(utc(2024, 10, 26, 23) + timedelta(hours=h)) for h in range(5)]


# -- enqueueing ticks ---------------------------------------------------------------------------


def test_each_tick_is_enqueued_once_with_the_definitions_payload_whichever_worker_sees_it(register):
    register(SCHEDULED, queue="issue4-scheduled", schedule="*/5 * * * *", payload={"n": 1})
    sync_at(utc(2024, 1, 1, 12, 0, 30))

    tick(utc(2024, 1, 1, 12, 5))
    tick(utc(2024, 1, 1, 12, 5, 0, 300000))
    tick(utc(2024, 1, 1, 12, 6))
    tick(utc(2024, 1, 1, 12, 9, 59))  # a worker started since

    assert scheduled() == [key(utc(2024, 1, 1, 12, 5))]
    job = Job.objects.get(name=SCHEDULED)
    assert (job.payload, job.queue, job.status) == ({"n": 1}, "issue4-scheduled", Status.QUEUED)


def test_a_tick_before_the_schedule_was_first_synced_is_not_enqueued(register):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 3))

    tick(utc(2024, 1, 1, 12, 4))  # the latest tick, 12:00, predates the definition

    assert scheduled() == []


def test_after_downtime_only_the_latest_missed_tick_is_enqueued(register):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    tick(utc(2024, 1, 1, 12, 5))

    # Every worker was down for an hour: eleven ticks were missed.
    sync_at(utc(2024, 1, 1, 13, 2, 10))
    tick(utc(2024, 1, 1, 13, 2, 10))
    tick(utc(2024, 1, 1, 13, 4))

    assert scheduled() == [key(utc(2024, 1, 1, 12, 5)), key(utc(2024, 1, 1, 13))]


def test_a_changed_schedule_applies_from_the_next_start_and_no_tick_of_the_old_one_follows(register):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    tick(utc(2024, 1, 1, 12, 5))

    register(SCHEDULED, schedule="0 * * * *", version=2)  # a deploy: hourly now
    assert sync_at(utc(2024, 1, 1, 12, 7)) == [f"changed {SCHEDULED}"]
    tick(utc(2024, 1, 1, 12, 7, 1))  # the new schedule's latest tick, 12:00, predates the change
    tick(utc(2024, 1, 1, 12, 10))  # 12:10 is a tick of the old schedule only: nobody enqueues it
    tick(utc(2024, 1, 1, 13, 0, 1))

    assert scheduled() == [key(utc(2024, 1, 1, 12, 5)), key(utc(2024, 1, 1, 13))]


def test_a_paused_schedule_enqueues_nothing_until_resumed(register):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    JobDefinition.objects.filter(name=SCHEDULED).update(paused=True)

    tick(utc(2024, 1, 1, 12, 5))
    tick(utc(2024, 1, 1, 12, 10))
    assert scheduled() == []

    JobDefinition.objects.filter(name=SCHEDULED).update(paused=False)
    tick(utc(2024, 1, 1, 12, 11))
    assert scheduled() == [key(utc(2024, 1, 1, 12, 10))]


def test_an_overridden_schedule_and_payload_are_the_ones_enqueued(register):
    register(SCHEDULED, schedule="*/5 * * * *", payload={"n": 1})
    with override_settings(DOCTORJOB={"JOBS": {SCHEDULED: {"schedule": "0 * * * *", "payload": {"n": 2}}}}):
        sync_at(utc(2024, 1, 1, 11, 30))
        tick(utc(2024, 1, 1, 12, 10))

    assert scheduled() == [key(utc(2024, 1, 1, 12))]
    assert Job.objects.get(name=SCHEDULED).payload == {"n": 2}


def test_a_timezone_override_reads_the_schedule_in_that_time_zone(register):
    register(SCHEDULED, schedule="0 9 * * *")
    with override_settings(DOCTORJOB={"JOBS": {SCHEDULED: {"timezone": "America/New_York"}}}):
        sync_at(utc(2024, 1, 1))
        tick(utc(2024, 1, 1, 15))  # 10:00 in New York

    assert scheduled() == [key(utc(2024, 1, 1, 14))]  # 9:00 in New York


def test_a_tick_is_due_at_its_time_on_the_database_clock_not_the_enqueuing_hosts(register):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    with clock(utc(2024, 1, 1, 12, 9)):  # this host's clock runs four minutes ahead
        maintenance.enqueue_due_ticks("default", now=utc(2024, 1, 1, 12, 5))
    assert Job.objects.get(name=SCHEDULED).run_at == utc(2024, 1, 1, 12, 5)


def test_a_queue_paused_holds_its_schedules_ticks_too(register):
    from doctorjob.models import QueueState

    register(SCHEDULED, queue="issue4-scheduled", schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    QueueState.objects.filter(name="issue4-scheduled").update(paused=True)
    tick(utc(2024, 1, 1, 12, 5))
    assert scheduled() == []
    QueueState.objects.filter(name="issue4-scheduled").update(paused=False)
    tick(utc(2024, 1, 1, 12, 6))
    assert scheduled() == [key(utc(2024, 1, 1, 12, 5))]


def test_a_tick_is_never_enqueued_again_once_its_job_is_gone(register):
    register(SCHEDULED, queue="issue4-scheduled", schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))
    tick(utc(2024, 1, 1, 12, 5))
    Job.objects.filter(name=SCHEDULED).delete()  # pruned by retention, or deleted by someone

    sync_at(utc(2024, 1, 1, 12, 6))  # every worker restarts (a deploy)
    tick(utc(2024, 1, 1, 12, 6))
    assert scheduled() == []
    assert JobDefinition.objects.get(name=SCHEDULED).last_tick == utc(2024, 1, 1, 12, 5)

    tick(utc(2024, 1, 1, 12, 10))
    assert scheduled() == [key(utc(2024, 1, 1, 12, 10))]


def test_a_tick_whose_enqueue_fails_is_not_recorded_and_comes_again(register, monkeypatch):
    register(SCHEDULED, schedule="*/5 * * * *")
    sync_at(utc(2024, 1, 1, 12, 0, 30))

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away mid-tick")

    monkeypatch.setattr(maintenance, "enqueue", broken)
    tick(utc(2024, 1, 1, 12, 5))  # logged; the other schedules go on
    assert JobDefinition.objects.get(name=SCHEDULED).last_tick is None
    monkeypatch.undo()

    tick(utc(2024, 1, 1, 12, 6))
    assert scheduled() == [key(utc(2024, 1, 1, 12, 5))]


# -- jobs that must not overlap -----------------------------------------------------------------


@pytest.fixture
def extra():
    """The singleton and per-tenant jobs of tests/testapp/jobs_issue4.py, for this test only."""
    with extra_jobs():
        yield


def reload(job) -> Job:
    return Job.objects.get(pk=job.pk)


def test_enqueue_gives_singleton_and_per_key_jobs_their_concurrency_key(extra, tmp_path):
    log = str(tmp_path / "log")
    assert enqueue("issue4.singleton", {"log": log}).concurrency_key == "issue4.singleton"
    assert enqueue("issue4.per_tenant", {"tenant": 7, "log": log}).concurrency_key == "issue4.per_tenant:7"
    assert enqueue("tests.noop").concurrency_key is None


@needs_partial_unique_index
def test_the_database_refuses_a_second_running_job_with_the_same_concurrency_key():
    JobFactory(running=True, concurrency_key="issue4.singleton")
    JobFactory(concurrency_key="issue4.singleton")  # queued: fine
    JobFactory(running=True, concurrency_key="issue4.per_tenant:b")
    with pytest.raises(IntegrityError), transaction.atomic():
        JobFactory(running=True, concurrency_key="issue4.singleton")


@needs_partial_unique_index
@in_worker
def test_a_singleton_waits_queued_while_another_run_holds_it_then_runs(run_worker, extra, tmp_path):
    held = JobFactory(running=True, name="issue4.singleton", concurrency_key="issue4.singleton")  # another worker
    waiting = enqueue("issue4.singleton", {"log": str(tmp_path / "log")})

    run_worker()
    assert (reload(waiting).status, reload(waiting).attempts) == (Status.QUEUED, 0)

    Job.objects.filter(pk=held.pk).update(status=Status.SUCCEEDED)  # the other run ends
    run_worker()
    assert reload(waiting).status == Status.SUCCEEDED


@needs_partial_unique_index
@in_worker
def test_on_overlap_skip_marks_the_job_skipped_while_another_run_holds_it(run_worker, extra):
    held = JobFactory(running=True, name="issue4.singleton_or_skip", concurrency_key="issue4.singleton_or_skip")
    job = enqueue("issue4.singleton_or_skip")

    run_worker()

    job = reload(job)
    assert (job.status, job.attempts) == (Status.SKIPPED, 0)
    assert job.error == "skipped: another run holding concurrency key 'issue4.singleton_or_skip' was in progress"
    assert job.finished_at is not None
    assert reload(held).status == Status.RUNNING
    later = enqueue("issue4.singleton_or_skip")
    Job.objects.filter(pk=held.pk).update(status=Status.SUCCEEDED)
    run_worker()
    assert reload(later).status == Status.SUCCEEDED  # skipped only while the other run was in progress


@needs_partial_unique_index
@in_worker
def test_a_held_key_holds_back_only_its_own_jobs(run_worker, extra, tmp_path):
    JobFactory(running=True, name="issue4.per_tenant", concurrency_key="issue4.per_tenant:a")
    log = str(tmp_path / "log")
    same_tenant = enqueue("issue4.per_tenant", {"tenant": "a", "log": log})
    other_tenants = [enqueue("issue4.per_tenant", {"tenant": t, "log": log}) for t in ("b", "c")]
    unkeyed = enqueue("tests.noop")

    run_worker(concurrency=2)

    assert (reload(same_tenant).status, reload(same_tenant).attempts) == (Status.QUEUED, 0)
    assert [reload(j).status for j in [*other_tenants, unkeyed]] == [Status.SUCCEEDED] * 3
