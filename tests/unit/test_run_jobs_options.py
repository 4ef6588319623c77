"""run_jobs refuses bad options with a clear message before touching the database."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from doctorjob.management.commands.run_jobs import Command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["--concurrency", "two"], "argument --concurrency: expected a whole number, got 'two'"),
        (["--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
        (["--max-jobs", "0"], "argument --max-jobs: must be at least 1, got 0"),
        (["--lease", "2"], "argument --lease: must be at least 3 seconds, got 2"),
        (["--lease", "nan"], "argument --lease: must be at least 3 seconds, got nan"),
        (["--poll-interval", "abc"], "argument --poll-interval: expected a number of seconds, got 'abc'"),
        (["--poll-interval", "0"], "argument --poll-interval: must be at least 0.001 seconds, got 0"),
        (["--shutdown-timeout", "-1"], "argument --shutdown-timeout: must be at least 0 seconds, got -1"),
        (
            ["--queues", "a,,b"],
            "argument --queues: expected comma-separated queue names (a queue name is 1 to "
            "100 letters, digits, '_', '-', '.' or ':'), got ''",
        ),
        (
            ["--queues", "emails;reports"],
            "argument --queues: expected comma-separated queue names (a queue name "
            "is 1 to 100 letters, digits, '_', '-', '.' or ':'), got 'emails;reports'",
        ),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_option_is_a_command_error_naming_the_option(args, message):
    with pytest.raises(CommandError) as excinfo:
        call_command("run_jobs", *args)
    assert message in str(excinfo.value)


def parse(*args: str):
    return Command().create_parser("manage.py", "run_jobs").parse_args(list(args))


def test_options_are_parsed_into_the_workers_types():
    options = parse(
        "--queues",
        "emails, reports",
        "--concurrency",
        "8",
        "--batch-size",
        "50",
        "--burst",
        "--max-jobs",
        "10",
        "--poll-interval",
        "0.5",
        "--lease",
        "3",
        "--shutdown-timeout",
        "0",
    )
    assert options.queues == ["emails", "reports"]
    assert (options.concurrency, options.batch_size, options.max_jobs) == (8, 50, 10)
    assert (options.poll_interval, options.lease, options.shutdown_timeout) == (0.5, 3.0, 0.0)
    assert options.burst is True


def test_without_options_the_worker_uses_its_settings():
    options = parse()
    assert (options.queues, options.concurrency, options.batch_size, options.lease, options.burst) == (
        None,
        None,
        None,
        None,
        False,
    )
