"""The running totals behind the metrics' counters: each attempt and dead letter counted once,
only once its transaction has surely committed, and never taken back by retention."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from doctorjob import enqueue, maintenance, totals
from doctorjob.models import DeadLetter, Job, JobExecution

from .factories import DeadLetterFactory, JobFactory

pytestmark = pytest.mark.django_db


def attempt(queue: str, outcome: str, ago: float = 120) -> JobExecution:
    finished_at = timezone.now() - timedelta(seconds=ago)
    job = JobFactory(succeeded=True, queue=queue, finished_at=finished_at)
    return JobExecution.objects.create(job=job, outcome=outcome, finished_at=finished_at)


def table() -> dict[tuple[str, str], int]:
    return {(t.queue, t.outcome): t.total for t in totals.totals()}


def test_each_attempt_and_dead_letter_is_counted_once_by_queue_and_outcome():
    attempt("default", "succeeded")
    attempt("default", "succeeded")
    attempt("emails", "failed")
    attempt("emails", "lost")
    DeadLetterFactory(queue="emails", created_at=timezone.now() - timedelta(minutes=2))

    assert totals.count("default") == 5
    assert totals.count("default") == 0
    assert table() == {
        ("default", "succeeded"): 2,
        ("emails", "dead"): 1,
        ("emails", "failed"): 1,
        ("emails", "lost"): 1,
    }


def test_an_attempt_is_counted_only_once_it_is_older_than_the_lag(monkeypatch):
    totals.count("default")
    attempt("default", "succeeded", ago=0)  # its transaction could still be committing
    assert totals.count("default") == 0
    monkeypatch.setattr(totals, "LAG", timedelta(0))  # as if LAG had passed
    assert totals.count("default") == 1
    assert table() == {("default", "succeeded"): 1}


def test_the_totals_never_go_down_when_retention_prunes_the_history():
    attempt("default", "succeeded", ago=8 * 86400)
    totals.count("default")
    assert maintenance.prune_succeeded("default", timedelta(days=7)) == (1, False)
    DeadLetter.objects.all().delete()
    assert not JobExecution.objects.exists()
    totals.count("default")
    assert table() == {("default", "succeeded"): 1}


def test_a_stretch_another_worker_counted_first_is_not_counted_again(monkeypatch):
    attempt("default", "succeeded")
    real_now, other = totals.database_now, []

    def now_then_another_worker_counts(connection):
        value = real_now(connection)
        if not other:  # this round has read the mark; another worker counts before it goes on
            other.append(None)
            other[0] = totals.count("default")
        return value

    monkeypatch.setattr(totals, "database_now", now_then_another_worker_counts)
    assert totals.count("default") == 0
    assert other == [1]
    assert table() == {("default", "succeeded"): 1}


@pytest.mark.django_db(transaction=True)
def test_a_worker_s_real_outcomes_are_counted_by_the_maintenance_holder(run_worker, monkeypatch):
    with transaction.atomic():
        for n in range(3):
            enqueue("tests.noop", {"n": n})
        enqueue("tests.permanent", queue="emails")
    run_worker()
    assert Job.objects.filter(status="succeeded").count() == 3
    monkeypatch.setattr(totals, "LAG", timedelta(0))
    keeper = maintenance.Maintenance("default", "test", 30.0, threading.Event(), lambda finished: None)
    keeper.run_due(prune=False)
    assert table() == {("default", "succeeded"): 3, ("emails", "failed"): 1, ("emails", "dead"): 1}
