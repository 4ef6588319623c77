"""run_jobs as an operator uses it: options that make it exit, and options it refuses."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import transaction

from doctorjob import enqueue, enqueue_many
from doctorjob.models import Job, Status
from tests.testapp.models import Run

from .helpers import run_jobs, wait_for


@pytest.mark.django_db(transaction=True)
def test_burst_exits_0_when_no_job_is_runnable_now():
    later = enqueue("tests.record_run", delay=3600)

    done = run_jobs("--burst", "--poll-interval", "0.1", timeout=30)

    assert done.returncode == 0, done.stderr
    later.refresh_from_db()
    assert (later.status, later.attempts) == (Status.QUEUED, 0)


@pytest.mark.django_db(transaction=True)
def test_a_queue_no_registered_job_uses_is_warned_about_and_still_drained():
    job = enqueue("tests.noop", queue="adhoc")

    done = run_jobs("--burst", "--queues", "emials,adhoc,default", "--poll-interval", "0.1", timeout=30)

    assert done.returncode == 0, done.stderr
    assert "queue 'emials': no registered job uses it (a typo?)" in done.stderr
    assert "queue 'adhoc': no registered job uses it" in done.stderr
    assert "queue 'default'" not in done.stderr
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_burst_runs_every_runnable_job_then_exits_0(tmp_path):
    with transaction.atomic():
        jobs = enqueue_many([("tests.record_run", {"dupes": str(tmp_path / "dupes")})] * 25)

    done = run_jobs("--burst", "--concurrency", "3", "--batch-size", "4", timeout=30)

    assert done.returncode == 0, done.stderr
    assert set(Job.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert sorted(Run.objects.values_list("job_id", flat=True)) == sorted(job.pk for job in jobs)


@pytest.mark.django_db(transaction=True)
def test_max_jobs_runs_exactly_that_many_then_exits_0(tmp_path):
    with transaction.atomic():
        jobs = enqueue_many([("tests.record_run", {"dupes": str(tmp_path / "dupes")})] * 10)

    done = run_jobs("--max-jobs", "3", "--concurrency", "2", "--batch-size", "10", "--poll-interval", "0.1", timeout=30)

    assert done.returncode == 0, done.stderr
    assert Run.objects.count() == 3
    assert Job.objects.filter(status=Status.SUCCEEDED).count() == 3
    assert Job.objects.filter(status=Status.QUEUED, attempts=0).count() == len(jobs) - 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("option", "complaint"),
    [
        (["--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
        (["--lease", "1"], "--lease: must be at least 3 seconds, got 1"),
        (["--lease", "inf"], "--lease: must be at most 86400 seconds, got inf"),
        (["--lease", "1e12"], "--lease: must be at most 86400 seconds, got 1e12"),
        (["--batch-size", "100000000000000000000"], "--batch-size: must be at most 10,000, got 100000000000000000000"),
        (
            ["--queues", ","],
            "--queues: expected comma-separated queue names (a queue name is 1 to 100 letters, "
            "digits, '_', '-', '.' or ':'), got ''",
        ),
    ],
    ids=["concurrency-0", "lease-1", "lease-inf", "lease-1e12", "batch-size-1e20", "queues-empty"],
)
def test_bad_options_exit_non_zero_with_a_clear_message_and_write_nothing(option, complaint):
    waiting = enqueue("tests.noop", {"n": 1})
    before = doctorjob_rows()

    done = run_jobs(*option, "--burst", timeout=30)

    assert done.returncode != 0
    assert complaint in done.stderr
    assert "Traceback" not in done.stderr
    assert doctorjob_rows() == before
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Status.QUEUED, 0)


def doctorjob_rows() -> dict[str, list[dict]]:
    """Every row of every doctorjob table: jobs, dead letters, definitions, workers..."""
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in apps.get_app_config("doctorjob").get_models()
    }


@pytest.mark.django_db(transaction=True)
def test_processes_runs_that_many_workers_that_share_the_jobs(tmp_path):
    with transaction.atomic():
        jobs = enqueue_many([("tests.record_run", {"dupes": str(tmp_path / "dupes")})] * 60)

    done = run_jobs("--processes", "2", "--burst", "--batch-size", "5", timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stderr.count("worker started") == 2, done.stderr
    assert sorted(Run.objects.values_list("job_id", flat=True)) == sorted(job.pk for job in jobs)
    assert not (tmp_path / "dupes").exists()


@pytest.mark.django_db(transaction=True)
def test_sigterm_to_a_multi_process_worker_stops_every_process_gracefully(workers):
    import signal

    from doctorjob.models import Worker

    parent = workers("--processes", "2", "--poll-interval", "0.1", wait=False)
    wait_for(
        lambda: parent.output().count("worker started") == 2 and Worker.objects.count() == 2,
        message=lambda: f"two worker processes to start:\n{parent.output()}",
    )

    parent.signal(signal.SIGTERM)

    assert parent.wait() == 0
    assert parent.output().count("worker stopped") == 2
    assert not Worker.objects.exists()  # each removed its row on a clean exit


def test_on_a_database_never_migrated_run_jobs_and_enqueue_say_to_migrate_in_one_line(tmp_path):
    """Missing tables are not an outage to wait out: a one-line error and a non-zero exit."""
    import subprocess
    import sys

    from .helpers import ROOT, worker_env

    env = {**worker_env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}
    done = subprocess.run(
        [sys.executable, "-m", "django", "run_jobs", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "CommandError: doctorjob's tables are missing from database 'default': run `python manage.py migrate` "
        "(with --database default if it is not the default)"
    )
    assert "Traceback" not in done.stderr

    script = (
        "import django; django.setup()\n"
        "from doctorjob import NotMigrated, enqueue\n"
        "try:\n    enqueue('tests.noop')\nexcept NotMigrated as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith(
        "doctorjob's tables are missing from database 'default': run `python manage.py migrate`"
    ), done.stdout + done.stderr
