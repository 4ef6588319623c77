import argparse
import sys
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from doctorjob.conf import LIMITS, settings
from doctorjob.registry import QUEUE_NAME, QUEUE_RULE
from doctorjob.signal_handlers import configure_logging
from doctorjob.supervisor import run_processes, stop_on_signals


def whole(minimum: int = 1, maximum: int = 2**31 - 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got {text}")
        return value

    return parse


positive_int = whole()


def seconds(minimum: float, maximum: float = 86_400.0) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} seconds, got {text}")
        if not value <= maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g} seconds, got {text}")
        return value

    return parse


def limited(name: str) -> Callable[[str], float]:
    """The option type for the worker number ``name`` of conf.LIMITS."""
    low, high = LIMITS[name]
    return whole(int(low), int(high)) if isinstance(low, int) else seconds(low, high)


def queue_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    bad = [name for name in names if not QUEUE_NAME.fullmatch(name)]
    if bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated queue names ({QUEUE_RULE}), got {bad[0]!r}")
    return names


class Command(BaseCommand):
    help = (
        "Run doctorjob's worker: claim queued jobs, run their handlers, retry failures and "
        "dead-letter jobs that keep failing. SIGTERM/SIGINT stop it gracefully."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues", type=queue_list, help="Comma-separated queues to take jobs from (default: every queue)."
        )
        parser.add_argument(
            "--concurrency", type=limited("CONCURRENCY"), help=f"Handler threads (default {settings.CONCURRENCY})."
        )
        parser.add_argument(
            "--batch-size", type=limited("BATCH_SIZE"), help=f"Jobs claimed per query (default {settings.BATCH_SIZE})."
        )
        parser.add_argument("--burst", action="store_true", help="Exit 0 once no job is runnable now.")
        parser.add_argument(
            "--max-jobs", type=limited("MAX_JOBS"), help="Stop claiming after N jobs, let them finish and exit 0."
        )
        parser.add_argument(
            "--poll-interval",
            type=limited("POLL_INTERVAL"),
            help="Seconds between polls when "
            f"idle (default {settings.POLL_INTERVAL}); NOTIFY wakes it sooner on PostgreSQL.",
        )
        parser.add_argument(
            "--lease",
            type=limited("LEASE"),
            help=f"Lease length in seconds, 3 to 86400 (default {settings.LEASE}); renewed every third of it.",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=limited("SHUTDOWN_TIMEOUT"),
            help=f"Seconds running jobs get to finish on SIGTERM (default {settings.SHUTDOWN_TIMEOUT}).",
        )
        parser.add_argument(
            "--database", default=None, help="Database alias (default: the router's choice for doctorjob's Job model)."
        )
        parser.add_argument(
            "--relay",
            action="store_true",
            help="Run an outbox relay: publish the jobs of DOCTORJOB['RELAYS'] to their brokers, run no handler "
            "(--batch-size is the publishing batch).",
        )
        parser.add_argument(
            "--processes",
            type=limited("PROCESSES"),
            default=1,
            help="Worker processes to run, each with these options (default 1); for CPU-bound handlers.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["relay"]:
            return self._relay(options)
        if options["processes"] > 1:
            code = run_processes(options["processes"], self._child_argv(options))
            if code:
                raise SystemExit(code)
            return
        from doctorjob.worker import Worker  # here: the option types above import without Django set up

        configure_logging(options["verbosity"])
        try:
            worker = Worker(
                queues=options["queues"],
                concurrency=options["concurrency"],
                batch_size=options["batch_size"],
                poll_interval=options["poll_interval"],
                lease=options["lease"],
                shutdown_timeout=options["shutdown_timeout"],
                burst=options["burst"],
                max_jobs=options["max_jobs"],
                using=options["database"],
                log_jobs=options["verbosity"] >= 1,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        from django.db import connections

        if worker.alias not in connections:
            raise CommandError(f"unknown database alias {worker.alias!r}")

        from doctorjob import watchdog
        from doctorjob.exceptions import NotMigrated

        worker.watchdog = watchdog.start(worker, options["verbosity"])
        try:
            with stop_on_signals(worker):
                worker.run()
        except NotMigrated as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if worker.watchdog:  # we exit through Python: what we held is recorded or returned
                worker.watchdog.close()
        if worker.recycle:  # stuck threads: a fresh process is needed, as a supervisor would start
            raise SystemExit(3)

    def _relay(self, options: dict[str, Any]) -> None:
        """``run_jobs --relay``: a relay process (doctorjob.relays), thin over RelayWorker."""
        for option in ("concurrency", "max_jobs", "shutdown_timeout"):
            if options[option] is not None:
                raise CommandError(f"--{option.replace('_', '-')} does not apply to --relay: a relay runs no handler")
        if options["processes"] != 1:
            raise CommandError("--processes does not apply to --relay: start one relay per queue to keep its order")
        from django.db import connections

        from doctorjob.exceptions import NotMigrated
        from doctorjob.relays import RelayWorker

        configure_logging(options["verbosity"])
        if options["database"] is not None and options["database"] not in connections:
            raise CommandError(f"unknown database alias {options['database']!r}")
        try:
            relay = RelayWorker(
                queues=options["queues"],
                batch_size=options["batch_size"],
                poll_interval=options["poll_interval"],
                lease=options["lease"],
                burst=options["burst"],
                using=options["database"],
            )
        except (ValueError, TypeError, ImportError) as exc:
            raise CommandError(f"DOCTORJOB['RELAYS']: {exc}") from exc
        if not relay.relays:
            raise CommandError("no relay configured: add one to DOCTORJOB['RELAYS'] (see doctorjob.relays)")
        try:
            with stop_on_signals(relay):
                relay.run()
        except NotMigrated as exc:
            raise CommandError(str(exc)) from exc

    @staticmethod
    def _child_argv(options: dict[str, Any]) -> list[str]:
        """This command with the same options, for one worker process."""
        argv = [sys.executable, "-m", "django", "run_jobs", "-v", str(options["verbosity"])]
        for name in (
            "concurrency",
            "batch_size",
            "max_jobs",
            "poll_interval",
            "lease",
            "shutdown_timeout",
            "database",
            "settings",
        ):
            if options.get(name) is not None:
                argv += [f"--{name.replace('_', '-')}", str(options[name])]
        if options["queues"]:
            argv += ["--queues", ",".join(options["queues"])]
        if options["burst"]:
            argv.append("--burst")
        return argv
