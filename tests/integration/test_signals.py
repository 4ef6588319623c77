"""job_enqueued, sent by enqueue() in the caller's transaction; and what importing and calling
enqueue() loads (nothing that claims, renews or finishes jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import transaction

from doctorjob import enqueue, enqueue_many
from doctorjob.models import Job
from doctorjob.signals import job_enqueued

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def heard():
    """The (job, in_atomic_block, row visible) of each job_enqueued."""
    from django.db import connection

    calls = []

    def receiver(sender, job, **kwargs):
        assert sender is Job
        calls.append((job, connection.in_atomic_block, Job.objects.filter(pk=job.pk).exists()))

    job_enqueued.connect(receiver)
    yield calls
    job_enqueued.disconnect(receiver)


def test_job_enqueued_is_sent_once_the_row_is_written_inside_the_callers_transaction(heard):
    with transaction.atomic():
        job = enqueue("tests.noop", {"n": 1})
    [(sent, in_atomic, visible)] = heard
    assert (sent, sent.pk, in_atomic, visible) == (job, job.pk, True, True)


def test_job_enqueued_is_not_sent_by_enqueue_many_nor_for_a_key_already_held(heard):
    enqueue_many([("tests.noop", {"n": i}) for i in range(3)])
    first = enqueue("tests.noop", key="once")
    again = enqueue("tests.noop", key="once")
    assert again.pk == first.pk
    assert [job.pk for job, *_ in heard] == [first.pk]


def test_a_raising_receiver_reaches_the_caller_and_its_atomic_block_writes_nothing():
    def broken(sender, job, **kwargs):
        raise RuntimeError("receiver refused")

    job_enqueued.connect(broken)
    try:
        with pytest.raises(RuntimeError, match="receiver refused"), transaction.atomic():
            enqueue("tests.noop")
    finally:
        job_enqueued.disconnect(broken)
    assert not Job.objects.exists()


def test_importing_and_calling_enqueue_loads_nothing_that_claims_renews_or_finishes_jobs(tmp_path):
    script = (
        "import sys, django\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "import doctorjob\n"
        "doctorjob.enqueue('tests.noop', {'n': 1})\n"
        "print(sorted(m for m in sys.modules if m.startswith('doctorjob')))\n"
    )
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=str(ROOT),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    loaded = eval(out.strip().splitlines()[-1])  # noqa: S307 - our own script's list of names
    assert "doctorjob.outbox" in loaded
    for module in ("doctorjob.leases", "doctorjob.worker", "doctorjob.maintenance"):
        assert module not in loaded, f"{module} was loaded by enqueue(): {loaded}"
