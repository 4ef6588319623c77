"""The outbox relay (doctorjob.relays): the ``relayed`` status and outcome, ``Job.relayed_at``,
and the index retention prunes relayed jobs by."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0006_job_trees"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="relayed_at",
            field=models.DateTimeField(blank=True, help_text="When the broker confirmed the job (relays).", null=True),
        ),
        migrations.AlterField(
            model_name="job",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued"),
                    ("running", "running"),
                    ("succeeded", "succeeded"),
                    ("dead", "dead"),
                    ("cancelled", "cancelled"),
                    ("skipped", "skipped"),
                    ("waiting", "waiting"),
                    ("relayed", "relayed"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="jobexecution",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("succeeded", "succeeded"),
                    ("failed", "failed"),
                    ("skipped", "skipped"),
                    ("lost", "lost"),
                    ("relayed", "relayed"),
                ],
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "relayed")), fields=["finished_at"], name="doctorjob_job_relayed"
            ),
        ),
    ]
