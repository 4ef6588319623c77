"""The machine, the versions and the noise: what the report header says and the ``others CPU``
column measures."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

from .options import PROG

if TYPE_CHECKING:
    from .options import Options
    from .scratch import ScratchDatabase


# -- environment and noise --------------------------------------------------------------------------


def environment(db: ScratchDatabase, options: Options, source: str, load_before: list[float]) -> dict[str, Any]:
    """Machine, versions and settings, for the report header."""
    import django
    import psycopg
    from django.conf import settings as django_settings
    from django.db import connections

    from doctorjob import __version__
    from doctorjob.conf import settings

    def first(path: str, prefix: str) -> str:
        try:
            with open(path) as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), "?")
        except OSError:
            return "?"

    with psycopg.connect(**db.params, autocommit=True) as conn:
        server = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    source_settings = connections[source].settings_dict
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": _command(),
        "cpus": _cpus(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory": _gib(first("/proc/meminfo", "MemTotal")),
        "load_average_start": load_before,
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "doctorjob": __version__,
        "postgresql": server,
        "database": {
            "source_alias": source,
            "scratch": db.name,
            "host": source_settings.get("HOST") or "local",
            "port": source_settings.get("PORT") or "default",
            "CONN_MAX_AGE": source_settings.get("CONN_MAX_AGE"),
        },
        "DEBUG": django_settings.DEBUG,
        "DOCTORJOB": {name: str(getattr(settings, name)) for name in _SHOWN_SETTINGS},
        "worker": " ".join(["run_jobs -v 0", *options.run_jobs_args])
        + ("" if options.run_jobs_args else " (default options)")
        + ", doctorjob logger at WARNING",
        "poll_interval": options.poll_interval if options.poll_interval is not None else settings.POLL_INTERVAL,
    }


# The settings that change what the bench measures (BACKOFF and JOBS do not).
_SHOWN_SETTINGS = (
    "NOTIFY",
    "LISTEN_DATABASE",
    "CONCURRENCY",
    "BATCH_SIZE",
    "POLL_INTERVAL",
    "LEASE",
    "KEEP_SUCCEEDED",
    "REQUIRE_TRANSACTION",
)


def _command() -> str:
    """The command line as typed: ``python -m bench --quick``, not the path of ``bench/__main__.py``."""
    argv = list(sys.argv)
    main = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
    if argv and os.path.abspath(argv[0]) == main:
        argv[0] = PROG
    return " ".join(argv)


def _gib(meminfo: str) -> str:
    kib = meminfo.split()[0]
    return f"{int(kib) / 2**20:.1f} GiB" if kib.isdigit() else meminfo


def _cpus() -> int:
    return os.cpu_count() or 1


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# PostgreSQL's shared processes work for every database, the bench's included: not "others".
_PG_SHARED = (
    "checkpointer",
    "walwriter",
    "background writer",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
    " -D ",
    "config_file",
)


def _cpu_by_process() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command line, CPU seconds used so far), from /proc (empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        found[int(name)] = (int(fields[1]), cmdline, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _others_cpu(
    before: dict[int, tuple[int, str, float]], after: dict[int, tuple[int, str, float]], dbname: str
) -> float:
    """CPU seconds used between the two snapshots by processes that are not this bench: not us or
    our workers, not a PostgreSQL backend of the scratch database, not PostgreSQL's shared ones."""
    ours = {os.getpid()}
    grew = True
    while grew:  # descendants, whatever their depth
        new = {pid for pid, (ppid, _, _) in after.items() if ppid in ours} - ours
        ours |= new
        grew = bool(new)
    total = 0.0
    for pid, (_, cmdline, cpu) in after.items():
        if pid in ours:
            continue
        if cmdline.startswith("postgres") or "/postgres " in cmdline:
            if dbname in cmdline.split() or any(word in cmdline for word in _PG_SHARED):
                continue
        previous = before.get(pid)
        total += cpu - (previous[2] if previous and previous[1] == cmdline else 0.0)
    return total


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), None)
    except OSError:
        return None
