from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from doctorjob import definitions


class Command(BaseCommand):
    help = (
        "Record every registered job in JobDefinition/JobVersion, retire definitions the code no "
        "longer has, and print one line per change. Workers do the same when they start."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=None, help="Database alias (default: the router's choice).")

    def handle(self, *args: Any, **options: Any) -> None:
        changes = definitions.sync(options["database"])
        for line in changes:
            self.stdout.write(line)
        if not changes and options["verbosity"] >= 1:
            self.stdout.write("job definitions are up to date")
        for problem in definitions.unversioned_changes(options["database"]):
            self.stderr.write(f"warning: {problem}: increment its version (doctorjob.W001)")
