"""``python -m bench [options]``: parse the options, set Django up with the project's settings,
run the bench and print its report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import django
from django.core.management.base import BaseCommand, CommandError

from doctorjob.management.commands.run_jobs import positive_int, seconds

from .options import PROG, QUICK, BenchmarkError, Options
from .report import format_report
from .runner import run
from .workers import main as worker_main

# manage.py's default: from a checkout, the bench runs with the example project's settings.
DEFAULT_SETTINGS = "example_project.settings"
# The bench's own worker processes (python -m bench worker|raw-worker), see workers.main().
WORKER_COMMANDS = ("worker", "raw-worker")

DESCRIPTION = """\
Benchmark doctorjob against a raw-SQL psycopg baseline (PostgreSQL only): enqueue, bulk enqueue,
drain with 1 and N worker processes, enqueue→start latency with and without NOTIFY, and worker
memory. Runs in a scratch database '<NAME>_bench' it creates on the server of the chosen
database alias and drops at the end; your jobs are never touched.

Run it from the root of a doctorjob checkout (the bench is not part of the installed package)."""

EPILOG = f"""\
examples:
  {PROG}                                   full run, about 1-2 minutes
  {PROG} --quick                           smoke run, under a minute; numbers not comparable
  {PROG} --processes 1,2,4 --reps 3 --json bench.json
  DATABASE_URL=postgres://user@host/db {PROG}
  {PROG} --settings mysite.settings --pythonpath ~/src/mysite

settings: --settings, else $DJANGO_SETTINGS_MODULE, else {DEFAULT_SETTINGS} (as manage.py).
The doctorjob it measures is the one this Python imports. See docs/benchmark.md."""


def process_counts(text: str) -> tuple[int, ...]:
    """``N`` means 1 and N processes; a list such as ``1,2,4`` is taken as given."""
    counts = {positive_int(part.strip()) for part in text.split(",")}
    if "," not in text:
        counts.add(1)
    return tuple(sorted(counts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database",
        metavar="ALIAS",
        help="Database alias whose server hosts the "
        "scratch database '<NAME>_bench' (default: the router's choice for doctorjob's "
        "Job model).",
    )
    parser.add_argument("--json", metavar="PATH", help="Also save every raw number to PATH.")
    measures = parser.add_argument_group("what to measure")
    measures.add_argument("--jobs", type=positive_int, metavar="N", help="No-op jobs per drain (default 20,000).")
    measures.add_argument(
        "--enqueue-jobs", type=positive_int, metavar="N", help="Jobs enqueued one per transaction (default 5,000)."
    )
    measures.add_argument(
        "--bulk-jobs", type=positive_int, metavar="N", help="Jobs in the one enqueue_many() call (default 50,000)."
    )
    measures.add_argument(
        "--processes",
        type=process_counts,
        default=(1, 2),
        metavar="P",
        help="Worker processes for the drain: N (measured with 1 and N) or a list such as 1,2,4 (default 2).",
    )
    measures.add_argument("--probes", type=positive_int, metavar="N", help="Latency probes, 20 ms apart (default 200).")
    measures.add_argument(
        "--reps", type=positive_int, default=1, metavar="N", help="Repetitions; the report shows medians (default 1)."
    )
    measures.add_argument(
        "--skip-memory", action="store_true", help="Skip the worker memory measure (a 100,000-job drain)."
    )
    measures.add_argument(
        "--quick",
        action="store_true",
        help="Small counts for a smoke run of under a "
        "minute; the numbers are not comparable with a full run. Explicit counts still win.",
    )
    measures.add_argument(
        "--only",
        metavar="PREFIX",
        help="Only the measures whose key starts with one of these comma-separated prefixes, e.g. "
        "'relay/' or 'drain/,enqueue/' (the memory measure is then skipped).",
    )
    relay = parser.add_argument_group("the relay measures (run_jobs --relay; needs doctorjob[relay])")
    relay.add_argument(
        "--relay-redis",
        metavar="URL",
        default=Options.relay_redis,
        help=f"Redis to relay to, through Celery and through kombu (default {Options.relay_redis}); '' to skip.",
    )
    relay.add_argument(
        "--relay-amqp",
        metavar="URL",
        default=Options.relay_amqp,
        help="RabbitMQ to relay to through kombu (default amqp://guest:**@127.0.0.1:5672//); '' to skip.",
    )
    relay.add_argument("--relay-jobs", type=positive_int, metavar="N", help="Jobs per relay measure (default 20,000).")
    # Passed on to every doctorjob worker (run_jobs); the defaults are doctorjob's settings.
    workers = parser.add_argument_group("doctorjob's workers (default: the DOCTORJOB settings)")
    workers.add_argument("--concurrency", type=positive_int, metavar="N", help="run_jobs --concurrency.")
    workers.add_argument("--batch-size", type=positive_int, metavar="N", help="run_jobs --batch-size.")
    workers.add_argument(
        "--poll-interval",
        type=seconds(0.001),
        metavar="SECONDS",
        help="run_jobs --poll-interval; also the raw baseline's poll interval in the NOTIFY-off latency measure.",
    )
    django = parser.add_argument_group("Django")
    django.add_argument(
        "--settings",
        metavar="MODULE",
        help="The project's settings module (default: "
        f"$DJANGO_SETTINGS_MODULE, else {DEFAULT_SETTINGS}). The worker processes use it too.",
    )
    django.add_argument(
        "--pythonpath",
        metavar="DIR",
        help="A directory to add to the import path, e.g. the one holding your project's settings package.",
    )
    django.add_argument("--skip-checks", action="store_true", help="Skip Django's system checks.")
    django.add_argument(
        "-v",
        "--verbosity",
        type=int,
        choices=[0, 1, 2, 3],
        default=1,
        help="0 hides the progress lines on stderr (default 1).",
    )
    django.add_argument("--traceback", action="store_true", help="Raise on an error instead of printing its message.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench (or, as ``worker``/``raw-worker``, one of its worker processes); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in WORKER_COMMANDS:
        worker_main(argv)
        return 0
    args = build_parser().parse_args(argv)
    if args.pythonpath:
        sys.path.insert(0, os.path.abspath(args.pythonpath))
    settings_module = args.settings or os.environ.get("DJANGO_SETTINGS_MODULE") or DEFAULT_SETTINGS
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module  # the worker processes get it from run()
    try:
        django.setup()
        if not args.skip_checks:
            BaseCommand().check()  # as before a management command: errors stop the run, warnings show
        report = run(options_from(args), _progress if args.verbosity >= 1 else _quiet)
    except ImportError as exc:
        if args.traceback or not _is_settings_error(exc, settings_module):
            raise
        return _fail(
            f"cannot import the settings module '{settings_module}' ({exc}); run from the root "
            "of a checkout, or pass --settings (and --pythonpath)"
        )
    except (BenchmarkError, CommandError) as exc:  # CommandError: the system checks found errors
        if args.traceback:
            raise
        return _fail(str(exc))
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"raw numbers saved to {args.json}")
    return 0


def options_from(args: argparse.Namespace) -> Options:
    """The bench's Options from the parsed command line: --quick's counts, then explicit ones."""
    counts = dict(QUICK) if args.quick else {}
    counts.update(
        {
            name: getattr(args, name)
            for name in ("jobs", "enqueue_jobs", "bulk_jobs", "probes", "relay_jobs")
            if getattr(args, name) is not None
        }
    )
    run_jobs_args: list[str] = []
    for name in ("concurrency", "batch_size", "poll_interval"):
        if getattr(args, name) is not None:
            run_jobs_args += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return Options(
        database=args.database,
        processes=args.processes,
        reps=args.reps,
        skip_memory=args.skip_memory,
        run_jobs_args=tuple(run_jobs_args),
        poll_interval=args.poll_interval,
        relay_redis=args.relay_redis or None,
        relay_amqp=args.relay_amqp or None,
        only=tuple(part.strip() for part in args.only.split(",") if part.strip()) if args.only else (),
        **counts,
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _is_settings_error(exc: ImportError, settings_module: str) -> bool:
    """Whether the settings module itself (or a package above it) is what could not be found."""
    name = getattr(exc, "name", None)
    return bool(name) and (settings_module == name or settings_module.startswith(name + "."))
