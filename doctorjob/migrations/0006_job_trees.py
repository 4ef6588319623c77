"""Job trees (a parent waits for its children), results and progress."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0005_keys_compare_byte_for_byte"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="on_failure",
            field=models.CharField(
                blank=True,
                choices=[
                    ("fail-parent", "fail the parent"),
                    ("ignore", "ignore: the parent runs and sees it"),
                    ("remove", "remove the child"),
                ],
                help_text="What this child's failure does.",
                max_length=16,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                help_text="The job that runs once its children have finished.",
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="children",
                to="doctorjob.job",
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="pending_children",
            field=models.IntegerField(
                blank=True, help_text="Children still to finish before this job can run.", null=True
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="progress",
            field=models.JSONField(blank=True, help_text="Saved by the handler; kept across attempts.", null=True),
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
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("parent__isnull", False)), fields=["parent"], name="doctorjob_job_parent"
            ),
        ),
    ]
