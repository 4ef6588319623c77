"""What the bench measures and how much, and the names its processes share."""

from __future__ import annotations

from dataclasses import dataclass

from doctorjob.exceptions import DoctorJobError

NOOP = "doctorjob.bench.noop"
PROBE = "doctorjob.bench.probe"
SCRATCH_ALIAS = "doctorjob_bench"
PROG = "python -m bench"
SCRATCH_MARK = "doctorjob bench scratch database (safe to drop)"
# The mark of the scratch databases made when the bench was the bench_jobs command: one left by
# a killed run of that command is ours too, and is dropped like any leftover.
OLD_SCRATCH_MARKS = ("doctorjob bench_jobs scratch database (safe to drop)",)
PROBE_FILE_ENV = "DOCTORJOB_BENCH_PROBE_FILE"
CONNINFO_ENV = "DOCTORJOB_BENCH_CONNINFO"
POLL_EVERY = 0.02  # how often the queue is counted during a drain
PROBE_SPACING = 0.02  # latency probes are enqueued on this fixed schedule
DRAIN_CAP = 600.0  # a drain still running after this is stopped and reported as capped
RAW_BATCH = 100
RAW_IDLE = 0.01  # the raw drain loop's sleep when it finds nothing

# Smaller counts for a smoke run of under a minute; explicit options still win.
QUICK = {
    "jobs": 2_000,
    "enqueue_jobs": 300,
    "bulk_jobs": 5_000,
    "probes": 30,
    "memory_jobs": (1_000, 5_000),
    "relay_jobs": 2_000,
}


class BenchmarkError(DoctorJobError):
    """The benchmark cannot run here, or a measure failed; the message says which and why."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """What to measure and how much; ``run_jobs_args`` go to every doctorjob worker."""

    database: str | None = None
    jobs: int = 20_000
    enqueue_jobs: int = 5_000
    bulk_jobs: int = 50_000
    probes: int = 200
    processes: tuple[int, ...] = (1, 2)
    memory_jobs: tuple[int, int] = (10_000, 100_000)
    skip_memory: bool = False
    reps: int = 1
    run_jobs_args: tuple[str, ...] = ()
    poll_interval: float | None = None
    # The relay measures (bench/relay.py): the brokers, None to leave one out; relay_jobs per run.
    relay_redis: str | None = "redis://127.0.0.1:6379/7"
    relay_amqp: str | None = "amqp://guest:guest@127.0.0.1:5672//"
    relay_jobs: int = 20_000
    # Measures whose key starts with one of these (e.g. "relay/"); empty: all.
    only: tuple[str, ...] = ()
