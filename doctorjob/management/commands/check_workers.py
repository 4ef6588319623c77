"""``manage.py check_workers``: exit 0 when workers serve every queue with runnable jobs, else
print one line per problem and exit 1 (a liveness probe or a cron alert); exit 2 when it could
not check (bad option, database unreachable)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from doctorjob.conf import out_of_range
from doctorjob.health import problems


class Command(BaseCommand):
    help = "Exit 1 with one line per problem when no live worker serves runnable jobs, or one is stuck."
    # A probe prints its verdict and nothing else (the system checks' warnings are run_jobs' to print).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wedged-after",
            type=float,
            default=None,
            help="seconds a live worker may claim nothing while its jobs are due (default: WEDGED_AFTER, 300)",
        )
        parser.add_argument("--database", default=None, help="database alias (default: the router's choice)")

    def handle(self, *args: Any, wedged_after: float | None, database: str | None, **options: Any) -> None:
        if wedged_after is not None and (refusal := out_of_range("WEDGED_AFTER", wedged_after)):
            raise CommandError(f"--wedged-after {refusal}", returncode=2)
        try:
            found = problems(wedged_after=wedged_after, using=database)
        except DatabaseError as exc:
            raise CommandError(f"could not read the workers from the database: {exc}".strip(), returncode=2)
        for problem in found:
            self.stderr.write(str(problem))
        if found:
            raise SystemExit(1)
        if options["verbosity"] >= 1:
            self.stdout.write("ok: every queue with runnable jobs has a live worker, and none is stuck")
