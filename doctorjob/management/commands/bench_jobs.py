import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from doctorjob.management.commands.run_jobs import positive_int, seconds


def process_counts(text: str) -> tuple[int, ...]:
    """``N`` means 1 and N processes; a list such as ``1,2,4`` is taken as given."""
    counts = {positive_int(part.strip()) for part in text.split(",")}
    if "," not in text:
        counts.add(1)
    return tuple(sorted(counts))


class Command(BaseCommand):
    help = ("Benchmark doctorjob against a raw-SQL psycopg baseline (PostgreSQL only): enqueue, bulk "
            "enqueue, drain with 1 and N worker processes, enqueue→start latency with and without NOTIFY, "
            "and worker memory. Runs in a scratch database it creates and drops; your jobs are never touched.")

    def add_arguments(self, parser):
        parser.add_argument("--database", help="Database alias whose server hosts the scratch database "
                            "'<name>_bench' (default: the router's choice for doctorjob's Job model).")
        parser.add_argument("--jobs", type=positive_int, help="No-op jobs per drain (default 20,000).")
        parser.add_argument("--enqueue-jobs", type=positive_int, help="Jobs enqueued one per transaction "
                            "(default 5,000).")
        parser.add_argument("--bulk-jobs", type=positive_int, help="Jobs in the one enqueue_many() call "
                            "(default 50,000).")
        parser.add_argument("--processes", type=process_counts, default=(1, 2), help="Worker processes for "
                            "the drain: N (measured with 1 and N) or a list such as 1,2,4 (default 2).")
        parser.add_argument("--probes", type=positive_int, help="Latency probes, 20 ms apart (default 200).")
        parser.add_argument("--reps", type=positive_int, default=1, help="Repetitions; the report shows "
                            "medians (default 1).")
        parser.add_argument("--skip-memory", action="store_true", help="Skip the worker memory measure "
                            "(a 100,000-job drain).")
        parser.add_argument("--quick", action="store_true", help="Small counts for a smoke run of under a "
                            "minute; the numbers are not comparable with a full run.")
        parser.add_argument("--json", metavar="PATH", help="Also save every raw number to PATH.")
        # Passed on to every doctorjob worker (run_jobs); the defaults are doctorjob's settings.
        parser.add_argument("--concurrency", type=positive_int, help="run_jobs --concurrency.")
        parser.add_argument("--batch-size", type=positive_int, help="run_jobs --batch-size.")
        parser.add_argument("--poll-interval", type=seconds(0.001), help="run_jobs --poll-interval; also the "
                            "raw baseline's poll interval in the NOTIFY-off latency measure.")

    def handle(self, *args, **options):
        from doctorjob import benchmark

        counts = dict(benchmark.QUICK) if options["quick"] else {}
        counts.update({name: options[name] for name in ("jobs", "enqueue_jobs", "bulk_jobs", "probes")
                       if options[name] is not None})
        run_jobs_args = []
        for name in ("concurrency", "batch_size", "poll_interval"):
            if options[name] is not None:
                run_jobs_args += ["--" + name.replace("_", "-"), str(options[name])]
        bench_options = benchmark.Options(
            database=options["database"], processes=options["processes"], reps=options["reps"],
            skip_memory=options["skip_memory"], run_jobs_args=tuple(run_jobs_args),
            poll_interval=options["poll_interval"], **counts,
        )
        if options["verbosity"] >= 1:
            def progress(message: str) -> None:
                self.stderr.write(message, style_func=str)
        else:
            def progress(message: str) -> None:
                pass

        try:
            report = benchmark.run(bench_options, progress)
        except benchmark.BenchmarkError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(benchmark.format_report(report))
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(report, indent=2, default=str) + "\n")
            self.stdout.write(f"raw numbers saved to {options['json']}")

