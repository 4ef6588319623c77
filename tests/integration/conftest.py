"""Fixtures for integration tests: a real database, workers run in-process."""

from __future__ import annotations

import signal
import threading

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from doctorjob.worker import Worker

WORKER_TIMEOUT = 30.0


def pytest_configure(config):
    config.addinivalue_line("markers", "postgresql: runs only when DATABASE_URL points to PostgreSQL")


def pytest_collection_modifyitems(config, items):
    if django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs DATABASE_URL=postgres://... (PostgreSQL)")
    for item in items:
        if item.get_closest_marker("postgresql"):
            item.add_marker(skip)


@pytest.fixture
def run_worker():
    """Run a Worker (burst, one handler thread by default) in a thread of its own, as a real
    worker would with its own connection, and return it once it has exited.

    The tests using it need ``django_db(transaction=True)``: the worker only sees committed rows.
    LISTEN is off unless ``listen=True`` (polling is all a burst needs). Every thread the worker
    started is joined, so no connection outlives the test.
    """

    def run(*, listen: bool = False, **options) -> Worker:
        options = {"burst": True, "concurrency": 1, "poll_interval": 0.05, **options}
        doctorjob_settings = dict(getattr(django_settings, "DOCTORJOB", {}))
        if not listen:
            doctorjob_settings["LISTEN_DATABASE"] = False
        before = set(threading.enumerate())
        errors: list[BaseException] = []
        with override_settings(DOCTORJOB=doctorjob_settings):
            worker = Worker(**options)

            def target() -> None:
                try:
                    worker.run()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                    errors.append(exc)

            thread = threading.Thread(target=target, name="test-worker")
            thread.start()
            thread.join(WORKER_TIMEOUT)
            if thread.is_alive():
                worker.stop(now=True)
                thread.join(WORKER_TIMEOUT)
                pytest.fail(f"the worker did not exit within {WORKER_TIMEOUT}s")
        for started in set(threading.enumerate()) - before:
            started.join(WORKER_TIMEOUT)
        if errors:
            raise errors[0]
        return worker

    return run


@pytest.fixture
def restore_signal_handlers():
    """run_jobs installs SIGTERM/SIGINT handlers; put the test runner's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield saved
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def count_inserts():
    """``with count_inserts() as inserts: ...`` then ``inserts()`` is the number of INSERT
    statements into doctorjob_job run on the default connection."""

    class Counter(CaptureQueriesContext):
        def __call__(self) -> int:
            return sum(
                "INSERT INTO" in q["sql"].upper() and "DOCTORJOB_JOB" in q["sql"].upper() for q in self.captured_queries
            )

    return lambda: Counter(connection)
