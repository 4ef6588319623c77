"""The lifecycle: the maintenance lease, each definition's last enqueued tick, and the index of
keyed jobs in line.

``last_tick`` starts from what the schedules already did, so that an upgrade does not run a
tick again whose job retention already pruned (a monthly billing job, say): the latest tick
that has a job still, or else the latest tick due now, which earlier versions enqueued within a
second of its time.
"""

from datetime import UTC, datetime
from typing import Any

from django.db import migrations, models


def record_ticks_already_enqueued(apps: Any, schema_editor: Any) -> None:
    from doctorjob.schedule import latest_tick

    alias = schema_editor.connection.alias
    JobDefinition = apps.get_model("doctorjob", "JobDefinition")
    Job = apps.get_model("doctorjob", "Job")
    now = datetime.now(UTC)
    for definition in JobDefinition.objects.using(alias).exclude(schedule=""):
        prefix = f"schedule:{definition.name}:"
        keys = Job.objects.using(alias).filter(key__startswith=prefix).values_list("key", flat=True)
        ticks = [datetime.fromisoformat(key.removeprefix(prefix)) for key in keys]
        try:
            last = (
                max(ticks)
                if ticks
                else latest_tick(definition.schedule, now, (definition.options or {}).get("timezone"))
            )
        except Exception:  # noqa: BLE001 - a schedule its worker could not read either: left as it is
            continue
        JobDefinition.objects.using(alias).filter(pk=definition.pk).update(last_tick=last)


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0003_job_counters_without_checks"),
    ]

    operations = [
        migrations.CreateModel(
            name="MaintenanceLease",
            fields=[
                ("name", models.CharField(max_length=100, primary_key=True, serialize=False)),
                ("holder", models.CharField(max_length=255)),
                ("expires_at", models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name="jobdefinition",
            name="last_tick",
            field=models.DateTimeField(
                blank=True,
                help_text="The latest schedule tick enqueued: no tick up to it is enqueued again.",
                null=True,
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("concurrency_key__isnull", False), ("status", "queued")),
                fields=["concurrency_key", "-priority", "run_at", "id"],
                name="doctorjob_job_key_line",
            ),
        ),
        migrations.RunPython(record_ticks_already_enqueued, migrations.RunPython.noop, elidable=True),
    ]
