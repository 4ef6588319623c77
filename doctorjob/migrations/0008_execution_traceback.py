"""Each attempt keeps its traceback, not only the job's latest: Django's TaskResult.errors has one
TaskError, with its traceback, per failed attempt (doctorjob.backends)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0007_relay"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobexecution",
            name="traceback",
            field=models.TextField(blank=True, default=""),
        ),
    ]
