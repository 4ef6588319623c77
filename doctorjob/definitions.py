"""Job definitions and versions: the database's record of which jobs the code declares.

``sync()`` runs at every worker start and in ``manage.py sync_jobs``. Operations may override
a definition without a code change through ``DOCTORJOB["JOBS"]``; those overrides win here.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, router, transaction
from django.utils import timezone

from .conf import settings
from .models import JobDefinition, JobVersion, QueueState
from .registry import JobType, registry

OVERRIDE_KEYS = {"schedule", "payload", "version", "paused", "timezone"}


def desired(job_type: JobType) -> dict[str, Any]:
    """The definition row the code (plus DOCTORJOB['JOBS'] overrides) asks for."""
    override = settings.JOBS.get(job_type.name, {})
    code = declared(job_type)
    options = code["options"]
    if override.get("timezone"):
        options = {**options, "timezone": override["timezone"]}
    return {
        "queue": job_type.queue,
        "options": options,
        "schedule": override.get("schedule", code["schedule"]) or "",
        "payload": override.get("payload", code["payload"]),
        "version": override.get("version", job_type.version),
        "min_version": job_type.min_version,
    }


def declared(job_type: JobType) -> dict[str, Any]:
    """What the code alone declares for the job's version: its options, schedule and default
    payload. JobVersion records this, and W001 compares it, so operators' overrides never
    look like a code change."""
    return {
        "options": job_type.options,
        "schedule": job_type.schedule or "",
        "payload": job_type.payload if job_type.payload is not None else {},
    }


def sync(using: str | None = None) -> list[str]:
    """Bring JobDefinition rows in line with the registry; return one line per change
    (``added NAME``, ``changed NAME``, ``retired NAME``). Pauses set by operators are kept."""
    alias = using or router.db_for_write(JobDefinition)
    for attempt in range(3):
        try:
            return _sync(alias)
        except IntegrityError:  # another worker created the same row at the same moment
            if attempt == 2:
                raise
    return []


def _sync(alias: str) -> list[str]:
    changes = []
    now = timezone.now()
    with transaction.atomic(using=alias):
        rows = {d.name: d for d in JobDefinition.objects.using(alias).select_for_update()}
        for name, job_type in sorted(registry.items()):
            want = desired(job_type)
            paused = settings.JOBS.get(name, {}).get("paused")
            row = rows.get(name)
            if row is None:
                row = JobDefinition.objects.using(alias).create(
                    name=name,
                    paused=bool(paused),
                    scheduled_since=now if want["schedule"] else None,
                    created_at=now,
                    updated_at=now,
                    **want,
                )
                changes.append(f"added {name}")
            else:
                changed = {k: v for k, v in want.items() if getattr(row, k) != v}
                if paused is not None and row.paused != paused:
                    changed["paused"] = paused
                if row.retired:
                    changed["retired"] = False
                if "schedule" in changed:
                    changed["scheduled_since"] = now
                if changed:
                    for field, value in changed.items():
                        setattr(row, field, value)
                    row.updated_at = now
                    row.save(using=alias, update_fields=[*changed, "updated_at"])
                    changes.append(f"changed {name}")
            JobVersion.objects.using(alias).get_or_create(
                definition=row,
                number=want["version"],
                defaults={**declared(job_type), "first_seen": now},
            )
        for queue in sorted({t.queue for t in registry.values()}):  # listed in the admin, to pause
            QueueState.objects.using(alias).get_or_create(name=queue)
        for name, row in sorted(rows.items()):
            if name not in registry and not row.retired:
                row.retired, row.updated_at = True, now
                row.save(using=alias, update_fields=["retired", "updated_at"])
                changes.append(f"retired {name}")
    return changes


def unversioned_changes(using: str | None = None) -> list[str]:
    """Jobs whose options, schedule or default payload changed while their version did not."""
    alias = using or router.db_for_read(JobVersion)
    recorded = {
        (v.definition.name, v.number): v
        for v in JobVersion.objects.using(alias)
        .select_related("definition")
        .filter(definition__name__in=list(registry))
    }
    problems = []
    for name, job_type in sorted(registry.items()):
        version, code = desired(job_type)["version"], declared(job_type)
        seen = recorded.get((name, version))
        if seen is None:
            continue
        what = [
            label
            for label, a, b in (
                ("options", seen.options, code["options"]),
                ("schedule", seen.schedule, code["schedule"]),
                ("default payload", seen.payload, code["payload"]),
            )
            if a != b
        ]
        if what:
            problems.append(
                f"job '{name}': {' and '.join(what)} changed since version {version} was "
                f"recorded on {seen.first_seen:%Y-%m-%d}, but the version did not"
            )
    return problems
