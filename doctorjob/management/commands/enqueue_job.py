import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from doctorjob import DoctorJobError
from doctorjob.operations import run_now


class Command(BaseCommand):
    help = (
        "Enqueue one job to run now (a worker runs it), with its definition's default payload unless "
        "--payload is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Registered job name, e.g. accounts.send_login_link")
        parser.add_argument("--payload", help="The payload as JSON, e.g. '{\"client_id\": 1}'.")
        parser.add_argument("--database", default=None, help="Database alias (default: the router's choice).")

    def handle(self, *args: Any, **options: Any) -> None:
        payload = None
        if options["payload"] is not None:
            try:
                payload = json.loads(options["payload"])
            except json.JSONDecodeError as exc:
                raise CommandError(f"--payload is not valid JSON: {exc}") from exc
        try:
            job = run_now(options["name"], payload, using=options["database"])
        except DoctorJobError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"enqueued job {job.pk} ({job.name}) on queue {job.queue}")
