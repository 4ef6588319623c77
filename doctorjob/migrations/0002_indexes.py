"""Idempotency keys: a partial unique index instead of unique=True, so that jobs without a key
(most of them) are not entered in it and PostgreSQL has no LIKE-pattern index to maintain.
MySQL/MariaDB have no partial indexes and skip the constraint; they get a plain unique index,
which allows any number of NULLs there too.

Indexes and constraints on plain columns are declared with ``fields`` instead of expressions:
same indexes on PostgreSQL and SQLite, and MariaDB (no expression indexes) now gets them too."""

from typing import Any

from django.db import migrations, models


def mysql_unique_key(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "mysql":
        schema_editor.execute("CREATE UNIQUE INDEX doctorjob_job_key_unique ON doctorjob_job (`key`)")


def drop_mysql_unique_key(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "mysql":
        schema_editor.execute("DROP INDEX doctorjob_job_key_unique ON doctorjob_job")


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0001_initial"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="job",
            name="doctorjob_job_one_running_per_key",
        ),
        migrations.RemoveConstraint(
            model_name="jobversion",
            name="doctorjob_jobversion_unique",
        ),
        migrations.RemoveIndex(
            model_name="deadletter",
            name="doctorjob_deadletter_created",
        ),
        migrations.RemoveIndex(
            model_name="job",
            name="doctorjob_job_claim",
        ),
        migrations.RemoveIndex(
            model_name="job",
            name="doctorjob_job_claim_any",
        ),
        migrations.RemoveIndex(
            model_name="job",
            name="doctorjob_job_lease",
        ),
        migrations.RemoveIndex(
            model_name="job",
            name="doctorjob_job_succeeded",
        ),
        migrations.RemoveIndex(
            model_name="jobexecution",
            name="doctorjob_execution_job",
        ),
        migrations.AlterField(
            model_name="job",
            name="key",
            field=models.CharField(
                blank=True, help_text="Idempotency key: one job per key.", max_length=255, null=True
            ),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["created_at"], name="doctorjob_deadletter_created"),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["queue", "-priority", "run_at", "id"],
                name="doctorjob_job_claim",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["-priority", "run_at", "id"],
                name="doctorjob_job_claim_any",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "running")), fields=["lease_expires_at"], name="doctorjob_job_lease"
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "succeeded")), fields=["finished_at"], name="doctorjob_job_succeeded"
            ),
        ),
        migrations.AddIndex(
            model_name="jobexecution",
            index=models.Index(fields=["job", "attempt"], name="doctorjob_execution_job"),
        ),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=models.Q(("key__isnull", False)), fields=("key",), name="doctorjob_job_key_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=models.Q(("concurrency_key__isnull", False), ("status", "running")),
                fields=("concurrency_key",),
                name="doctorjob_job_one_running_per_key",
            ),
        ),
        migrations.AddConstraint(
            model_name="jobversion",
            constraint=models.UniqueConstraint(fields=("definition", "number"), name="doctorjob_jobversion_unique"),
        ),
        migrations.RunPython(mysql_unique_key, drop_mysql_unique_key, atomic=False, elidable=False),
    ]
