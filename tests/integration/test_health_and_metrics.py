"""check_workers' verdicts on the states workers leave in the database, and the Prometheus
metrics view: its figures, its token and permission."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from doctorjob import totals
from doctorjob.health import problems
from doctorjob.models import JobDefinition, JobExecution, QueueState, Worker

from .factories import DeadLetterFactory, JobFactory
from .test_dashboard import staff

pytestmark = pytest.mark.django_db

TOKEN = "a-long-enough-metrics-token"


def worker(name: str = "host:1:abc", *, queues: str = "", started_ago: float = 3600, **fields) -> Worker:
    now = timezone.now()
    fields.setdefault("last_heartbeat", now)
    return Worker.objects.create(
        name=name, host="host", pid=1, queues=queues, started_at=now - timedelta(seconds=started_ago), **fields
    )


def due(queue: str = "default", ago: float = 600, **fields):
    return JobFactory(queue=queue, run_at=timezone.now() - timedelta(seconds=ago), **fields)


def kinds() -> list[tuple[str, str]]:
    return [(p.kind, p.subject) for p in problems()]


def test_healthy_when_nothing_is_due_or_a_live_worker_takes_every_queue():
    assert kinds() == []
    due("default", ago=1)
    worker(queues="default,emails", started_ago=1)
    assert kinds() == []


def test_a_queue_with_runnable_jobs_and_no_live_worker_taking_it_is_reported():
    due("emails")
    worker(queues="default")
    worker("host:2:lost", lost=True)  # a lost worker serves nothing
    JobFactory(queue="later", run_at=timezone.now() + timedelta(hours=1))  # not due
    due("paused")
    QueueState.objects.create(name="paused", paused=True)

    [problem] = problems()

    assert (problem.kind, problem.subject) == ("unserved queue", "emails")
    assert str(problem).startswith("unserved queue: queue 'emails' has runnable jobs (the oldest due 6")


def test_a_live_worker_whose_heartbeat_is_older_than_its_lease_is_late():
    worker(lease=30, last_heartbeat=timezone.now() - timedelta(seconds=45))
    assert [str(p) for p in problems()] == [
        "late heartbeat: worker host:1:abc last beat 45s ago, more than its lease of 30s"
    ]


def test_a_beating_worker_that_claimed_nothing_while_its_jobs_were_due_is_wedged():
    due("default", ago=900)
    worker(last_claimed_at=timezone.now() - timedelta(seconds=700))

    assert kinds() == [("wedged worker", "host:1:abc")]
    assert [p.kind for p in problems(wedged_after=800)] == []
    with override_settings(DOCTORJOB={"WEDGED_AFTER": 800}):
        assert kinds() == []


def test_a_worker_whose_threads_are_all_busy_is_not_wedged_by_the_jobs_waiting_behind():
    due("default", ago=900)
    busy = worker(concurrency=1, last_claimed_at=timezone.now() - timedelta(seconds=700))
    JobFactory(running=True, worker=busy.name, started_at=timezone.now() - timedelta(seconds=700))
    assert kinds() == []


def test_an_idle_worker_is_not_wedged_nor_one_whose_due_jobs_are_paused_or_arrived_since():
    worker(last_claimed_at=timezone.now() - timedelta(seconds=700))
    assert kinds() == []  # nothing was due
    due("default", ago=60)  # due only since its last claim
    assert kinds() == []
    JobFactory(name="tests.paused", run_at=timezone.now() - timedelta(hours=1))
    JobDefinition.objects.create(name="tests.paused", paused=True)
    assert kinds() == []


def test_check_workers_prints_one_line_per_problem_and_exits_1():
    due("emails")
    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exit:
        call_command("check_workers", stdout=out, stderr=err)
    assert exit.value.code == 1
    assert err.getvalue().count("\n") == 1 and "queue 'emails'" in err.getvalue()


def test_check_workers_refuses_a_bad_threshold_with_exit_2():
    with pytest.raises(CommandError, match=r"--wedged-after must be a number from 1 to 604800, got -5.0") as refused:
        call_command("check_workers", "--wedged-after", "-5")
    assert refused.value.returncode == 2


# Metrics


def test_metrics_need_the_token_or_the_view_permission(client):
    url = reverse("doctorjob_metrics")
    assert client.get(url).status_code == 403
    with override_settings(DOCTORJOB={"METRICS_TOKEN": TOKEN}):
        assert client.get(url, headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 403
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert staff(Client()).get(url).status_code == 403
    assert staff(Client(), "view_job").get(url).status_code == 200
    assert staff(Client(), "view_job").post(url).status_code == 405


def test_metrics_report_jobs_queues_attempts_and_workers_in_prometheus_text(admin_client):
    due("emails", ago=120)
    JobFactory(running=True, queue="emails")
    done = JobFactory(succeeded=True)
    JobExecution.objects.create(job=done, outcome="succeeded", finished_at=timezone.now() - timedelta(minutes=2))
    DeadLetterFactory(queue="emails", created_at=timezone.now() - timedelta(minutes=2))
    totals.count("default")  # the maintenance holder's chore
    worker()
    worker("host:2:gone", lost=True)

    response = admin_client.get(reverse("doctorjob_metrics"))

    assert response["Content-Type"].startswith("text/plain; version=")
    lines = response.content.decode().splitlines()
    for expected in (
        'doctorjob_jobs{status="queued"} 1.0',
        'doctorjob_jobs{status="running"} 1.0',
        'doctorjob_jobs{status="succeeded"} 1.0',
        'doctorjob_queue_jobs{queue="emails",state="runnable"} 1.0',
        'doctorjob_queue_jobs{queue="emails",state="running"} 1.0',
        'doctorjob_attempts_total{outcome="succeeded",queue="default"} 1.0',
        'doctorjob_dead_letters_total{queue="emails"} 1.0',
        "# TYPE doctorjob_attempts_total counter",
        'doctorjob_workers{state="alive"} 1.0',
        'doctorjob_workers{state="lost"} 1.0',
    ):
        assert expected in lines
    [age] = [line for line in lines if line.startswith('doctorjob_queue_oldest_runnable_seconds{queue="emails"}')]
    assert 119 < float(age.split()[-1]) < 300


def test_a_short_metrics_token_is_refused_at_start_up():
    from doctorjob.checks import check_settings

    with override_settings(DOCTORJOB={"METRICS_TOKEN": "short"}):
        [error] = check_settings()
    assert error.id == "doctorjob.E003" and "METRICS_TOKEN" in error.msg
