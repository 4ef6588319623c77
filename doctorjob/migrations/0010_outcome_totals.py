"""Running totals of finished attempts and dead letters by queue and outcome, kept by the
maintenance holder (doctorjob.totals), so that the metrics' counters never go down when
retention prunes the execution history."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0009_dashboard"),
    ]

    operations = [
        migrations.CreateModel(
            name="TotalsMark",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("counted_until", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.CreateModel(
            name="OutcomeTotal",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("queue", models.CharField(max_length=100)),
                ("outcome", models.CharField(max_length=16)),
                ("total", models.BigIntegerField(default=0)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("queue", "outcome"), name="doctorjob_outcometotal_unique")
                ],
            },
        ),
    ]
