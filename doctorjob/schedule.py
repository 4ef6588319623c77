"""Cron schedules: parsing (croniter), the latest due tick, and enqueueing each tick once.

A tick is enqueued with the idempotency key ``schedule:<name>:<tick time>``, so however many
workers run, the unique key lets exactly one job in per tick. Only the latest tick that is due
is ever considered, so after downtime one job runs for the missed ticks, not one per tick.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from .exceptions import DoctorJobError


class ScheduleError(DoctorJobError, ValueError):
    """A cron expression croniter cannot parse."""


def _croniter(expression: str, start: datetime) -> Any:
    from croniter import croniter

    # Six fields: seconds come first, as in "*/1 * * * * *".
    return croniter(expression, start, second_at_beginning=len(expression.split()) == 6)


def validate_schedule(expression: str) -> None:
    """Raise ScheduleError unless ``expression`` is a 5- or 6-field cron expression."""
    from croniter import CroniterError

    if not isinstance(expression, str) or len(expression.split()) not in (5, 6):
        raise ScheduleError(f"{expression!r} is not a cron expression of 5 fields (or 6, seconds first)")
    try:
        _croniter(expression, timezone.now()).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"{expression!r} is not a valid cron expression: {exc}") from exc


def schedule_timezone(name: str | None = None) -> tzinfo:
    """Schedules are read in settings.TIME_ZONE (or a job's own time zone), so '0 9 * * *'
    means 9:00 local time."""
    return ZoneInfo(name or settings.TIME_ZONE or "UTC")


def latest_tick(expression: str, now: datetime | None = None, tz: str | None = None) -> datetime:
    """The most recent time at or before ``now`` that ``expression`` matches, in UTC.

    Arithmetic happens before the conversion to local time and the result is returned in UTC:
    a local time in the hour repeated when daylight saving ends loses its ``fold`` in
    arithmetic, and two such times compare equal in their own zone.
    """
    # get_prev() is strictly before its start: start just after `now` so `now` itself counts.
    start = ((now or timezone.now()) + timedelta(microseconds=1)).astimezone(schedule_timezone(tz))
    previous: datetime = _croniter(expression, start).get_prev(datetime)
    return previous.astimezone(ZoneInfo("UTC"))


def tick_key(name: str, tick: datetime) -> str:
    return f"schedule:{name}:{tick.astimezone(ZoneInfo('UTC')).isoformat()}"
