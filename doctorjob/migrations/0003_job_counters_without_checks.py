"""Job's counters lose their CHECK (>= 0) constraints, which PostgreSQL rebuilds from their
stored text for every INSERT (7–10 µs of the database's CPU per enqueue()). On PostgreSQL the
column type stays integer and only the constraints are dropped. SQLite ("integer unsigned" to
"integer") copies the table, and MySQL/MariaDB (unsigned to signed) rebuild it, once per
field."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0002_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="attempts",
            field=models.IntegerField(default=0, validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AlterField(
            model_name="job",
            name="max_attempts",
            field=models.IntegerField(default=3, validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AlterField(
            model_name="job",
            name="version",
            field=models.IntegerField(
                default=1,
                help_text="Version of the job it was enqueued with.",
                validators=[django.core.validators.MinValueValidator(0)],
            ),
        ),
    ]
