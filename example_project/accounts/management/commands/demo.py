import logging
import time
import uuid
from datetime import timedelta

from django.core.management import BaseCommand, CommandError, call_command
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from doctorjob import enqueue
from doctorjob.models import DeadLetter, Job
from example_project.accounts import services


class Command(BaseCommand):
    help = "Sign up sample clients, run their jobs and one that always fails, and report the outcome."

    def add_arguments(self, parser):
        parser.add_argument("--clients", type=int, default=3, help="How many clients to sign up.")
        parser.add_argument("--timeout", type=float, default=30, help="Seconds to wait for the jobs.")

    def handle(self, *, clients, timeout, **options):
        run = uuid.uuid4().hex[:8]
        signed_up = [services.sign_up(f"client-{run}-{i}@example.com") for i in range(1, clients + 1)]
        splines = enqueue("accounts.reticulate_splines", {"run": run})
        today = timezone.localdate()
        report = services.request_signup_report([today - timedelta(days=1), today])
        client_ids = [client.pk for client in signed_up]
        jobs = Job.objects.filter(
            Q(pk__in=[splines.pk, report.pk])
            | Q(parent=report)
            | Q(name="accounts.send_login_link", payload__client_id__in=client_ids)
        )
        self.stdout.write(f"Signed up {len(signed_up)} clients and enqueued {jobs.count()} jobs (run {run}).")

        # Retries are scheduled a moment later, so keep draining until nothing is left to do.
        # Only the worker's warnings (retries, dead letters) are shown: they tell the story.
        self.stdout.write("Running the worker (run_jobs --burst) until every job is done:")
        logging.getLogger("doctorjob").setLevel(logging.WARNING)
        deadline = time.monotonic() + timeout
        while jobs.filter(status__in=["queued", "running", "waiting"]).exists():
            if time.monotonic() > deadline:
                raise CommandError(f"Jobs were still pending after {timeout:g} seconds.")
            call_command("run_jobs", burst=True, verbosity=0)
            next_run = jobs.filter(status="queued").aggregate(at=Min("run_at"))["at"]
            wait = (next_run - timezone.now()).total_seconds() if next_run else 0
            time.sleep(min(max(wait, 0.05), 1))

        dead_letters = DeadLetter.objects.filter(
            Q(name="accounts.reticulate_splines", payload__run=run)
            | Q(name="accounts.send_login_link", payload__client_id__in=client_ids)
        ).count()
        succeeded = jobs.filter(status="succeeded").count()
        lines = [f"\n{jobs.count()} jobs: {succeeded} succeeded, {dead_letters} dead-lettered."]
        for name, status, count, attempts in (
            jobs.values_list("name", "status").annotate(n=Count("id"), attempts=Sum("attempts")).order_by("name")
        ):
            what = "dead-lettered" if status == "dead" else status
            lines.append(
                f"  {name:<28} {count} {what}, {attempts} attempt{'s' if attempts != 1 else ''}"
                f"{' in all' if count > 1 else ''}"
            )
        report.refresh_from_db()
        lines.append(
            f"\nThe sign-up report (job #{report.pk}) ran after its {jobs.filter(parent=report).count()} fetches: "
            f"{report.result}"
        )
        self.stdout.write(
            "\n".join(lines) + "\n"
            "\n"
            "The dead letter (a job that always fails, retried twice) waits in the admin, to be\n"
            "corrected and requeued:\n"
            "  .venv/bin/python manage.py createsuperuser\n"
            "  .venv/bin/python manage.py runserver\n"
            "  then open http://127.0.0.1:8000/admin/doctorjob/\n"
        )
