"""The bench's worker processes: doctorjob's ``run_jobs`` on the scratch database, and the raw
psycopg loop of the baseline on its plain table, both started as ``python -m bench worker|raw-worker``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .options import CONNINFO_ENV, NOOP, PROBE, PROBE_FILE_ENV, PROG, RAW_BATCH, RAW_IDLE
from .relay import RELAYS_ENV
from .scratch import add_scratch_alias

# -- job handlers (registered by register_jobs(), never at import) -------------------------------

_probe_lock = threading.Lock()


def noop(payload: Any, ctx: Any) -> None:
    """Do nothing: a drain of these measures doctorjob's own cost per job."""


def probe(payload: Any, ctx: Any) -> None:
    """Append enqueue→start latency, taken first thing, to the file the bench reads."""
    latency = time.time() - payload["t"]
    with _probe_lock, open(os.environ[PROBE_FILE_ENV], "a") as f:
        f.write(f"{latency:.6f}\n")


def register_jobs() -> None:
    """Register the bench's handlers in this process (idempotent)."""
    from doctorjob.registry import job, registry

    for name, func in ((NOOP, noop), (PROBE, probe)):
        if name not in registry:
            job(name)(func)


# -- the raw baseline's SQL (a plain table, no framework) -----------------------------------------

RAW_TABLE = "bench_raw_job"
RAW_CHANNEL = "bench_raw"
RAW_DDL = f"""
CREATE TABLE {RAW_TABLE} (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {RAW_TABLE}_queued ON {RAW_TABLE} (id) WHERE status = 'queued'
"""
RAW_INSERT = f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)"
# The same single-statement shape doctorjob uses: the NOTIFY is delivered at commit.
RAW_INSERT_NOTIFY = (
    f"WITH ins AS (INSERT INTO {RAW_TABLE} (payload) VALUES (%s) RETURNING id) "
    f"SELECT pg_notify('{RAW_CHANNEL}', '') FROM ins"
)
RAW_INSERT_MANY = f"INSERT INTO {RAW_TABLE} (payload) SELECT unnest(%s::jsonb[])"
RAW_CLAIM = f"""
UPDATE {RAW_TABLE} SET status = 'running'
WHERE id IN (SELECT id FROM {RAW_TABLE} WHERE status = 'queued' ORDER BY id
             FOR UPDATE SKIP LOCKED LIMIT %s)
RETURNING id, payload
"""
RAW_COMPLETE = f"UPDATE {RAW_TABLE} SET status = 'done' WHERE id = ANY(%s)"


def raw_worker(*, batch: int, idle: float, listen: bool) -> None:
    """Claim ``batch`` jobs at a time and mark them done, until killed; log probe latencies."""
    import psycopg

    probe_file = os.environ.get(PROBE_FILE_ENV)
    with psycopg.connect(os.environ[CONNINFO_ENV], autocommit=True) as conn:
        if listen:
            conn.execute(f"LISTEN {RAW_CHANNEL}")
        while True:
            rows = conn.execute(RAW_CLAIM, (batch,)).fetchall()
            if rows:
                if probe_file:
                    now = time.time()
                    with open(probe_file, "a") as f:
                        f.writelines(f"{now - payload['t']:.6f}\n" for _, payload in rows if "t" in payload)
                conn.execute(RAW_COMPLETE, ([row[0] for row in rows],))
            elif listen:
                # psycopg keeps notifications that arrived during the claim: none is missed.
                for _ in conn.notifies(timeout=idle, stop_after=1):
                    pass
            else:
                time.sleep(idle)


def doctorjob_worker(
    *, source: str, dbname: str, notify: bool, run_jobs_args: Sequence[str], keep_succeeded: float | None = None
) -> None:
    """Run the real ``run_jobs`` command on the scratch database (Django is set up already)."""
    from django.conf import settings as django_settings
    from django.core.management import call_command
    from django.test.utils import override_settings

    register_jobs()
    alias = add_scratch_alias(source, dbname)
    overrides = dict(getattr(django_settings, "DOCTORJOB", {}), NOTIFY=notify)
    if keep_succeeded is not None:  # the soak: retention in minutes, not days
        overrides["KEEP_SUCCEEDED"] = timedelta(seconds=keep_succeeded)
    if os.environ.get(RELAYS_ENV):  # the relay measures: the broker the bench declared a queue on
        overrides["RELAYS"] = json.loads(os.environ[RELAYS_ENV])
    if overrides.get("LISTEN_DATABASE") is not False:
        overrides["LISTEN_DATABASE"] = None  # listen where the bench notifies: the scratch database
    override_settings(DEBUG=False, DOCTORJOB=overrides).enable()  # DEBUG: see run()
    # As in the peer harness: per-job INFO lines would dominate the cost of no-op jobs.
    logging.getLogger("doctorjob").setLevel(logging.WARNING)
    call_command("run_jobs", *run_jobs_args, database=alias, verbosity=0)


# -- entry point of the worker processes -----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench worker|raw-worker``: one worker process of the bench."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One worker process of the bench, started by "
        "the bench itself; run the bench with: " + PROG + " [options]",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="doctorjob's run_jobs on the scratch database")
    worker.add_argument("--settings", required=True, help="the project's settings module")
    worker.add_argument("--source", required=True, help="alias whose settings reach the server")
    worker.add_argument("--dbname", required=True, help="the scratch database")
    worker.add_argument("--no-notify", dest="notify", action="store_false")
    worker.add_argument("--run-jobs-args", default="[]", help="JSON list of run_jobs arguments")
    worker.add_argument("--keep-succeeded", type=float, help="KEEP_SUCCEEDED in seconds")
    raw = commands.add_parser("raw-worker", help=f"the raw psycopg loop (${CONNINFO_ENV})")
    raw.add_argument("--batch", type=int, default=RAW_BATCH)
    raw.add_argument("--idle", type=float, default=RAW_IDLE)
    raw.add_argument("--listen", action="store_true")
    args = parser.parse_args(argv)
    _exit_with_parent()
    if args.command == "raw-worker":
        raw_worker(batch=args.batch, idle=args.idle, listen=args.listen)
        return
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    import django

    django.setup()
    doctorjob_worker(
        source=args.source,
        dbname=args.dbname,
        notify=args.notify,
        run_jobs_args=json.loads(args.run_jobs_args),
        keep_succeeded=args.keep_succeeded,
    )


def _exit_with_parent() -> None:
    """SIGTERM ourselves if the bench dies without stopping us (kill -9), instead of polling forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()
