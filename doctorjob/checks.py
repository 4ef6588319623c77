"""System checks: a malformed DOCTORJOB setting is reported at start-up, not at 3 a.m."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core import checks

from .conf import DEFAULTS, MAX_KEEP_SUCCEEDED, out_of_range

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "REQUIRE_TRANSACTION": (lambda v: isinstance(v, bool), "True or False"),
    "KEEP_SUCCEEDED": (
        lambda v: isinstance(v, timedelta) and timedelta(0) <= v <= MAX_KEEP_SUCCEEDED,
        "a timedelta from 0 to 3650 days",
    ),
    "BACKOFF": (lambda v: isinstance(v, dict), "a dict with base, factor, cap, jitter"),
    "NOTIFY": (lambda v: isinstance(v, bool), "True or False"),
    "LISTEN_DATABASE": (
        lambda v: v is None or v is False or v in django_settings.DATABASES,
        "None, False or an alias in DATABASES",
    ),
    "PREPARE": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
    "CONCURRENCY": (lambda v: not out_of_range("CONCURRENCY", v), "an integer from 1 to 1000"),
    "BATCH_SIZE": (lambda v: not out_of_range("BATCH_SIZE", v), "an integer from 1 to 10000"),
    "POLL_INTERVAL": (lambda v: not out_of_range("POLL_INTERVAL", v), "a number of seconds from 0.001 to 3600"),
    "LEASE": (lambda v: not out_of_range("LEASE", v), "a number of seconds from 3 to 86400"),
    "SHUTDOWN_TIMEOUT": (lambda v: not out_of_range("SHUTDOWN_TIMEOUT", v), "a number of seconds from 0 to 86400"),
    "JOBS": (lambda v: isinstance(v, dict), "a dict of job name -> overrides"),
    "RELAYS": (lambda v: isinstance(v, dict), "a dict of relay name -> {'BACKEND', 'OPTIONS', 'QUEUES'}"),
    "TIMEOUT": (
        lambda v: v is None or not out_of_range("TIMEOUT", v),
        "None or a number of seconds from 0.1 to 604800",
    ),
    "METRICS_TOKEN": (
        lambda v: v is None or (isinstance(v, str) and len(v) >= 16),
        "None or a string of 16+ characters",
    ),
    "WEDGED_AFTER": (lambda v: not out_of_range("WEDGED_AFTER", v), "a number of seconds from 1 to 604800"),
    "MAX_PAYLOAD_BYTES": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8 * 2**20,
        "an integer from 1 to 8 MiB (8388608), what every supported database accepts",
    ),
}


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    value = getattr(django_settings, "DOCTORJOB", {})
    if not isinstance(value, dict):
        return [checks.Error("DOCTORJOB must be a dict", obj="settings.DOCTORJOB", id="doctorjob.E001")]
    errors: list[checks.CheckMessage] = []
    for key, item in value.items():
        if key not in DEFAULTS:
            errors.append(
                checks.Error(
                    f"DOCTORJOB has an unknown key {key!r}",
                    hint="Known keys: " + ", ".join(sorted(DEFAULTS)),
                    obj="settings.DOCTORJOB",
                    id="doctorjob.E002",
                )
            )
        elif not _RULES[key][0](item):
            errors.append(
                checks.Error(
                    f"DOCTORJOB[{key!r}] must be {_RULES[key][1]}, got {item!r}",
                    obj="settings.DOCTORJOB",
                    id="doctorjob.E003",
                )
            )
    if isinstance(value.get("BACKOFF"), dict):
        from .retry import make_backoff

        try:
            make_backoff(value["BACKOFF"], DEFAULTS["BACKOFF"])
        except (TypeError, ValueError) as exc:
            errors.append(checks.Error(f"DOCTORJOB['BACKOFF']: {exc}", obj="settings.DOCTORJOB", id="doctorjob.E004"))
    return errors


@checks.register()
def check_job_overrides(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate every DOCTORJOB['JOBS'] entry against the registered jobs."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from .definitions import OVERRIDE_KEYS
    from .exceptions import InvalidPayload
    from .payloads import check_json
    from .registry import registry
    from .schedule import ScheduleError, validate_schedule

    value = getattr(django_settings, "DOCTORJOB", {})
    jobs = value.get("JOBS", {}) if isinstance(value, dict) else {}
    if not isinstance(jobs, dict):
        return []  # reported by check_settings
    errors: list[checks.CheckMessage] = []

    def error(name: str, message: str, id: str, hint: str | None = None) -> None:
        errors.append(
            checks.Error(f"DOCTORJOB['JOBS'][{name!r}]: {message}", hint=hint, obj="settings.DOCTORJOB", id=id)
        )

    for name, override in jobs.items():
        if name not in registry:
            import difflib

            close = difflib.get_close_matches(str(name), registry, n=3)
            error(
                name,
                "no job is registered under that name",
                "doctorjob.E010",
                f"Did you mean {' or '.join(map(repr, close))}?" if close else None,
            )
            continue
        if not isinstance(override, dict):
            error(name, f"must be a dict, got {override!r}", "doctorjob.E011")
            continue
        for key in set(override) - OVERRIDE_KEYS:
            error(name, f"unknown key {key!r}", "doctorjob.E011", "Known keys: " + ", ".join(sorted(OVERRIDE_KEYS)))
        if override.get("schedule"):
            try:
                validate_schedule(override["schedule"])
            except ScheduleError as exc:
                error(name, f"bad 'schedule': {exc}", "doctorjob.E012")
        if "timezone" in override:
            try:
                ZoneInfo(str(override["timezone"]))
            except (ZoneInfoNotFoundError, ValueError):
                error(name, f"bad 'timezone': unknown time zone {override['timezone']!r}", "doctorjob.E013")
        if "payload" in override:
            try:
                check_json(override["payload"], name)
                registry[name].validate(override["payload"])
            except InvalidPayload as exc:
                error(name, f"bad 'payload': {exc}", "doctorjob.E014")
        elif override.get("schedule") and not registry[name].schedule:
            # Scheduled by the override alone: its ticks carry the job's default payload.
            try:
                registry[name].validate(registry[name].payload if registry[name].payload is not None else {})
            except InvalidPayload as exc:
                error(
                    name,
                    f"the schedule's payload (the job's default) fails: {exc}",
                    "doctorjob.E014",
                    "Give the override a 'payload' the job's schema accepts.",
                )
        if "version" in override and not (
            isinstance(override["version"], int)
            and not isinstance(override["version"], bool)
            and 1 <= override["version"] < 2**31
        ):
            error(
                name,
                f"bad 'version': must be an integer from 1 to 2147483647, got {override['version']!r}",
                "doctorjob.E015",
            )
        elif "version" in override and override["version"] < registry[name].min_version:
            error(
                name,
                f"bad 'version': {override['version']} is below the job's min_version "
                f"{registry[name].min_version}, so every job enqueued would be skipped",
                "doctorjob.E015",
            )
        if "paused" in override and not isinstance(override["paused"], bool):
            error(name, f"bad 'paused': must be True or False, got {override['paused']!r}", "doctorjob.E016")
    return errors


@checks.register(checks.Tags.database)
def check_versions(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when a job's options or schedule changed but its version did not (runs with
    ``manage.py check --database`` and at worker start)."""
    from django.db import DatabaseError

    from .definitions import unversioned_changes

    warnings: list[checks.CheckMessage] = []
    for alias in databases or []:
        try:
            problems = unversioned_changes(alias)
        except DatabaseError:  # not migrated yet: nothing recorded to compare with
            continue
        warnings.extend(
            checks.Warning(
                problem,
                hint="Increment the job's version (@job(version=...)) when its data or pattern changes.",
                obj="doctorjob",
                id="doctorjob.W001",
            )
            for problem in problems
        )
    return warnings


@checks.register()
def check_overlap_support(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Singleton and concurrency-key jobs rest on a partial unique index, which MySQL and
    MariaDB do not have: say so rather than let jobs overlap silently."""
    from django.db import connections, router

    from .models import Job
    from .registry import registry

    keyed = sorted(name for name, t in registry.items() if t.singleton or t.concurrency_key)
    vendor = connections[router.db_for_write(Job)].vendor
    if keyed and vendor == "mysql":
        return [
            checks.Warning(
                f"{', '.join(keyed)} use singleton or concurrency_key, which {vendor} cannot enforce "
                "(it has no partial unique indexes): their runs may overlap",
                hint="Use PostgreSQL or SQLite for jobs that must not overlap.",
                obj="doctorjob",
                id="doctorjob.W002",
            )
        ]
    return []


RELAY_KEYS = {"BACKEND", "OPTIONS", "QUEUES"}


@checks.register()
def check_relays(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate DOCTORJOB['RELAYS'] and the relays @job(relay=...) names (doctorjob.E020-E023)."""
    from django.utils.module_loading import import_string

    from .registry import QUEUE_NAME, QUEUE_RULE, registry
    from .relays import Relay

    value = getattr(django_settings, "DOCTORJOB", {})
    relays = value.get("RELAYS", {}) if isinstance(value, dict) else {}
    relays = relays if isinstance(relays, dict) else {}
    errors: list[checks.CheckMessage] = []

    def error(message: str, id_: str, hint: str | None = None) -> None:
        errors.append(checks.Error(message, hint=hint, obj="settings.DOCTORJOB", id=id_))

    owner: dict[str, str] = {}
    for name, config in relays.items():
        where = f"DOCTORJOB['RELAYS'][{name!r}]"
        if not isinstance(config, dict):
            error(f"{where} must be a dict with 'BACKEND', got {config!r}", "doctorjob.E020")
            continue
        for key in sorted(set(config) - RELAY_KEYS):
            error(f"{where} has an unknown key {key!r}", "doctorjob.E020", "Known keys: BACKEND, OPTIONS, QUEUES")
        if not isinstance(config.get("OPTIONS", {}), dict):
            error(f"{where}['OPTIONS'] must be a dict of keyword arguments", "doctorjob.E020")
        queues = config.get("QUEUES", [])
        if not isinstance(queues, (list, tuple)) or not all(
            isinstance(q, str) and QUEUE_NAME.fullmatch(q) for q in queues
        ):
            error(f"{where}['QUEUES'] must be a list of queue names ({QUEUE_RULE}), got {queues!r}", "doctorjob.E020")
            queues = []
        for queue in queues:
            if queue in owner and owner[queue] != name:
                error(
                    f"queue {queue!r} is in the QUEUES of two relays: {owner[queue]!r} and {name!r}", "doctorjob.E023"
                )
            owner[queue] = name
        backend = config.get("BACKEND")
        try:
            cls = import_string(backend) if isinstance(backend, str) else None
        except ImportError as exc:
            error(f"{where}['BACKEND'] cannot be imported: {exc}", "doctorjob.E021")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Relay)):
            error(
                f"{where}['BACKEND'] must be the dotted path of a doctorjob.relays.Relay subclass, got {backend!r}",
                "doctorjob.E021",
            )
    for job_name, job_type in sorted(registry.items()):
        if job_type.relay and job_type.relay not in relays:
            error(
                f"job '{job_name}' names relay {job_type.relay!r}, which DOCTORJOB['RELAYS'] does not define",
                "doctorjob.E022",
                "Known relays: " + (", ".join(sorted(relays)) or "none"),
            )
    return errors
