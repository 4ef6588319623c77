"""Real ``run_jobs`` processes and deadline-bound polling for the acceptance tests.

Each worker is ``python -m django run_jobs ...`` with the tests' settings, pointed at the test
database pytest-django created, its output in a log file the test can read. Tests wait on the
database or on files with a deadline (``wait_for``), never on a fixed sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"gave up after {timeout:g}s waiting for {text}")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], Any],
    *,
    duration: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Check ``predicate`` keeps holding for ``duration`` seconds: for what must NOT happen."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            text = message() if callable(message) else message
            raise AssertionError(f"{text} stopped holding")
        time.sleep(interval)


def worker_database_url() -> str:
    """A DATABASE_URL for the test database pytest-django created (never the real one)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(db["NAME"])
        assert name != ":memory:" and not name.startswith("file:"), "workers need a SQLite file"
        return f"sqlite:///{Path(name).resolve()}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"{scheme}://{auth}{'@' if auth else ''}{host}{port}/{quote(db['NAME'], safe='')}"


def worker_env(database_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "DATABASE_URL": database_url or worker_database_url(),
            "DOCTORJOB_LOG_LEVEL": "INFO",  # wait_started() looks for the "worker started" line
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",  # SIGABRT makes a stuck worker print every thread's stack
        }
    )
    return env


def run_jobs(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``run_jobs`` to completion, for options that make it exit by itself."""
    return manage("run_jobs", *args, timeout=timeout)


def manage(command: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a management command to completion in a process of its own, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "django", command, *args],
        cwd=ROOT,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class WorkerProcess:
    """One ``run_jobs`` process in the background, its stdout and stderr in ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "django", "run_jobs", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<worker pid={self.pid} run_jobs {' '.join(self.args)}>"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_started(self, timeout: float = STARTUP_TIMEOUT) -> WorkerProcess:
        """Wait until the worker logged that it started; fail at once if it died instead."""

        def started() -> bool:
            if "worker started" in self.output():
                return True
            assert self.alive(), f"{self} exited with {self.popen.returncode}:\n{self.output()}"
            return False

        wait_for(started, timeout=timeout, message=lambda: f"{self} to start:\n{self.output()}")
        return self

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the worker to exit by itself; return its exit code."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self} still running after {timeout:g}s:\n{self.output()[-4000:]}") from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def watchdog_pid(self) -> int | None:
        """The pid of the worker's watchdog, from its start-up line."""
        found = re.search(r"watchdog=pid (\d+)", self.output())
        return int(found[1]) if found else None

    def kill(self, *, watchdog: bool = False) -> None:
        """SIGKILL: the worker gets no chance to clean up, and its watchdog finishes what it held.
        With ``watchdog``, the watchdog is killed first, as when the host goes down: the lease
        sweep is what rescues the jobs then."""
        pid = self.watchdog_pid() if watchdog else None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not _exists(pid), timeout=10, message=f"watchdog pid={pid} to die")
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def dump_stacks(self) -> None:
        """SIGABRT: faulthandler writes the stack of every thread to the log, then the process dies."""
        if self.alive():
            self.popen.send_signal(signal.SIGCONT)  # in case it was paused
            self.popen.send_signal(signal.SIGABRT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.kill(watchdog=True)  # a watchdog must not touch the database of the next test
        self._log_file.close()


def in_thread(func: Callable[[], Any], name: str = "other-connection") -> ThreadCall:
    """Start ``func`` in a thread of its own, which therefore has its own database connection."""
    return ThreadCall(func, name)


class ThreadCall:
    """``func`` running in another thread; ``result()`` joins it and returns or re-raises."""

    def __init__(self, func: Callable[[], Any], name: str) -> None:
        import threading

        self._func = func
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._func()
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            connection.close()  # this thread's connection; never leave one behind

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 30.0) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"thread {self._thread.name} still running after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value


def status_of(job: Any) -> str:
    """The job's status as stored right now."""
    from doctorjob.models import Job

    return Job.objects.filter(pk=job.pk).values_list("status", flat=True).get()


def statuses() -> dict[str, int]:
    """How many jobs are in each status: what a failed wait shows."""
    from django.db.models import Count

    from doctorjob.models import Job

    return dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by())


def write_atomically(path: Path, text: str) -> None:
    """Create ``path`` with ``text`` in one step, so a handler never reads it half-written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.rename(path)


def pause(worker: WorkerProcess, attempts: int = 50) -> None:
    """SIGSTOP ``worker`` at a moment it holds no database lock, so that other workers and the
    test are not blocked by a process that cannot finish its statement."""
    for _ in range(attempts):
        worker.signal(signal.SIGSTOP)
        wait_for(lambda: _stopped(worker.pid), timeout=5, message=f"{worker} to stop")
        if _database_is_quiet():
            return
        worker.signal(signal.SIGCONT)
        time.sleep(0.01)  # let it finish the statement it was in
    raise AssertionError(f"could not pause {worker} outside a database statement")


def resume(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGCONT)


def _exists(pid: int) -> bool:
    """The process runs, or is a zombie not reaped yet (a watchdog's parent is init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir())


def _database_is_quiet() -> bool:
    """No other connection is inside a statement or holds a lock that blocks writers."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity AS a WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND (state = 'active' OR EXISTS ("
                "  SELECT 1 FROM pg_locks AS l WHERE l.pid = a.pid AND l.relation IS NOT NULL "
                "  AND l.mode <> 'AccessShareLock'))"
            )
            return cursor.fetchone()[0] == 0
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
                "AND ID <> CONNECTION_ID() AND (COMMAND <> 'Sleep' OR ID IN "
                "(SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX))"
            )
            return cursor.fetchone()[0] == 0
    import sqlite3

    probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN EXCLUSIVE")  # fails if anyone holds even a read lock
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()
