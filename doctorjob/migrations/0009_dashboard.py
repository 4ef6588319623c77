"""The dashboard and check_workers: when a worker last claimed jobs, and a BRIN index on when
attempts finished (PostgreSQL).

The dashboard charts the attempts of the last hour. Without an index that is a scan of the
whole execution history (a million rows at 7 days of retention); a B-tree would cost every
finished attempt another index entry. Attempts are written in about the order they finish,
so a BRIN index (a few pages for millions of rows, almost free to maintain) narrows the read
to the last hour's blocks. Other databases keep the scan: their histories are smaller.
"""

from typing import Any

from django.db import migrations, models

BRIN = "doctorjob_execution_finished_brin"


def create_brin(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {BRIN} ON doctorjob_jobexecution USING brin (finished_at)")


def drop_brin(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {BRIN}")


class Migration(migrations.Migration):
    dependencies = [("doctorjob", "0008_execution_traceback")]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="last_claimed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(create_brin, drop_brin, elidable=False),
    ]
