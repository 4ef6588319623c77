"""The outbox relay in-process, with a Relay of the tests' own (tests.testapp.relays.FileRelay):
which jobs it takes, what it records, and how it fails. The built-in relays against real
brokers are in tests/acceptance/test_relay.py."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test.utils import override_settings
from django.urls import reverse

from doctorjob import db, enqueue, leases
from doctorjob.models import DeadLetter, Job, JobExecution, Status
from doctorjob.relays import Relay, RelayWorker, relayed
from tests.testapp.relays import FileRelay

TIMEOUT = 30.0
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run_relay(tmp_path: Path):
    """Run a RelayWorker with a FileRelay (burst by default) in a thread of its own and return it
    once it has exited; ``until`` stops it once that predicate holds instead."""

    def run(relay: Relay | None = None, *, until=None, **options) -> RelayWorker:
        options = {"burst": until is None, "poll_interval": 0.05, **options}
        relay = relay or FileRelay(str(tmp_path / "broker.jsonl"))
        worker = RelayWorker(relays={"custom": relay}, **options)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

        before = set(threading.enumerate())
        thread = threading.Thread(target=target, name="test-relay")
        thread.start()
        try:
            if until is not None:
                from tests.acceptance.helpers import wait_for

                wait_for(until, timeout=TIMEOUT, message="the relay's condition")
                worker.stop()
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "the relay did not exit"
        finally:
            worker.stop()
            thread.join(TIMEOUT)
            for started in set(threading.enumerate()) - before:
                started.join(TIMEOUT)
        if errors:
            raise errors[0]
        return worker

    return run


def published(tmp_path: Path) -> list[dict]:
    path = tmp_path / "broker.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_relay_publishes_relay_jobs_in_enqueue_order_and_records_them_relayed(run_relay, tmp_path):
    with transaction.atomic():
        jobs = [enqueue("tests.relay.custom", {"n": n}) for n in range(7)]
        plain = enqueue("tests.noop", {"n": 99})
    worker = run_relay(batch_size=3)  # three batches
    assert [m["id"] for m in published(tmp_path)] == [j.pk for j in jobs]
    first = {"id": jobs[0].pk, "name": "tests.relay.custom", "queue": "default", "payload": {"n": 0}}
    assert published(tmp_path)[0] == first
    assert worker.published == 7
    for job in Job.objects.filter(pk__in=[j.pk for j in jobs]):
        assert (job.status, job.attempts, job.lease_id is not None) == (Status.RELAYED, 1, True)
        assert job.relayed_at is not None and job.relayed_at == job.finished_at
    assert set(JobExecution.objects.filter(job__name="tests.relay.custom").values_list("outcome", flat=True)) == {
        "relayed"
    }
    plain.refresh_from_db()
    assert (plain.status, plain.attempts) == (Status.QUEUED, 0), "a relay runs no handler"


def test_a_plain_worker_never_claims_relay_jobs(run_worker):
    with transaction.atomic():
        named = enqueue("tests.relay.custom", {"n": 1})
        celery = enqueue("tests.relay.celery", {"run": "x", "n": 1})
        by_queue = enqueue("tests.relay.any", {"n": 1}, queue="to-redis")
        plain = enqueue("tests.relay.any", {"n": 2})
    run_worker()
    assert Job.objects.get(pk=plain.pk).status == Status.SUCCEEDED
    for job in Job.objects.filter(pk__in=[named.pk, celery.pk, by_queue.pk]):
        assert (job.status, job.attempts) == (Status.QUEUED, 0), job.name


def test_relayed_names_the_relay_jobs_and_queues_from_the_registry_and_settings():
    names, queues = relayed()
    assert {"tests.relay.custom", "tests.relay.celery"} <= set(names) and "tests.relay.any" not in names
    assert {"to-rabbitmq", "to-redis"} <= set(queues)


def test_rolled_back_and_uncommitted_enqueues_never_reach_the_relay(run_relay, tmp_path):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue("tests.relay.custom", {"n": "rolled back"})
        raise ZeroDivisionError
    committed = enqueue("tests.relay.custom", {"n": "committed"})
    run_relay()
    assert [m["payload"] for m in published(tmp_path)] == [{"n": "committed"}]
    assert Job.objects.get(pk=committed.pk).status == Status.RELAYED


def test_a_failing_publish_counts_attempts_and_dead_letters_through_the_workers_finish(run_relay, tmp_path):
    fail = tmp_path / "fail"
    fail.touch()
    job = enqueue("tests.relay.custom", {"n": 1})  # max_attempts=2, backoff base 0
    run_relay(FileRelay(str(tmp_path / "broker.jsonl"), fail=str(fail)))
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.DEAD, 2)
    assert job.error == "ValueError: the file broker refused the batch" and "Traceback" in job.traceback
    letter = DeadLetter.objects.get(job_id=job.pk)
    assert (letter.attempts, letter.error) == (2, job.error)
    assert list(JobExecution.objects.filter(job=job).values_list("outcome", flat=True)) == ["failed", "failed"]
    assert published(tmp_path) == []


def test_an_unreachable_broker_counts_no_attempt_logs_a_warning_and_loses_nothing(run_relay, tmp_path, caplog):
    down = tmp_path / "down"
    down.touch()
    jobs = [enqueue("tests.relay.custom", {"n": n}) for n in range(3)]
    relay = FileRelay(str(tmp_path / "broker.jsonl"), down=str(down))
    with caplog.at_level(logging.WARNING, logger="doctorjob"):
        run_relay(relay, until=lambda: "relay unavailable relay=custom jobs=3" in caplog.text)
    warning = next(r for r in caplog.records if "relay unavailable" in r.getMessage())
    assert warning.levelno == logging.WARNING and "the file broker is down" in warning.getMessage()
    for job in Job.objects.filter(pk__in=[j.pk for j in jobs]):
        assert (job.status, job.attempts, job.error) == (Status.QUEUED, 0, "")
    assert not JobExecution.objects.exists() and not DeadLetter.objects.exists()

    down.unlink()  # the broker is back
    run_relay(relay)
    assert [m["id"] for m in published(tmp_path)] == [j.pk for j in jobs]
    assert set(Job.objects.values_list("status", flat=True)) == {Status.RELAYED}


def test_a_relay_takes_only_its_queues_with_queues(run_relay, tmp_path):
    a = enqueue("tests.relay.custom", {"n": 1}, queue="relay-a")
    b = enqueue("tests.relay.custom", {"n": 2}, queue="relay-b")
    run_relay(queues=["relay-b"])
    assert [m["id"] for m in published(tmp_path)] == [b.pk]
    assert Job.objects.get(pk=a.pk).status == Status.QUEUED


def test_a_job_of_a_relay_not_configured_fails_its_attempts_with_a_clear_error(tmp_path):
    job = enqueue("tests.relay.celery", {"run": "x", "n": 1})  # "celery" is not among the relays given
    worker = RelayWorker(relays={"custom": FileRelay(str(tmp_path / "broker.jsonl"))}, burst=True)
    worker.relay_once()
    job.refresh_from_db()
    assert job.status == Status.QUEUED and job.attempts == 1
    assert job.error == "LookupError: no relay named 'celery' in DOCTORJOB['RELAYS'] for job 'tests.relay.celery'"


def test_the_admin_filters_relayed_jobs_and_shows_when_a_job_was_relayed(run_relay, admin_client):
    relayed_job = enqueue("tests.relay.custom", {"n": 1})
    queued = enqueue("tests.noop", {"n": 2})
    run_relay()
    listing = admin_client.get(reverse("admin:doctorjob_job_changelist"), {"status__exact": "relayed"})
    assert listing.status_code == 200
    body = listing.content.decode()
    assert reverse("admin:doctorjob_job_change", args=[relayed_job.pk]) in body
    assert reverse("admin:doctorjob_job_change", args=[queued.pk]) not in body
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[relayed_job.pk])).content.decode()
    assert "Relayed at" in page
    assert re.search(r"Relayed at.*?<div class=\"readonly\">(?!-)", page, re.S)


@pytest.mark.postgresql
def test_the_claims_with_relays_configured_still_read_the_claim_index_in_order():
    """Both claims, a plain worker's passing relay jobs over and a relay's taking only them, keep
    the claim's plan: an ordered index scan, no sort, no scan of the table."""
    for n in range(200):
        enqueue("tests.relay.custom" if n % 2 else "tests.noop", {"n": n})
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE doctorjob_job")
    names, queues = relayed()
    filters = {
        "plain": (" AND NOT c.name = ANY(%s::text[]) AND NOT c.queue = ANY(%s::text[])", [list(names), list(queues)]),
        "relay": (" AND (c.name = ANY(%s::text[]) OR c.queue = ANY(%s::text[]))", [list(names), list(queues)]),
    }
    for kind, (sql, params) in filters.items():
        explain = "EXPLAIN (ANALYZE, COSTS OFF) " + leases._CLAIM.format(filters=sql)
        with transaction.atomic():
            rows = db.execute(
                connection,
                explain,
                [*params, [], 10, uuid.uuid4(), "explain", 30.0],
                planner=leases._CLAIM_PLANNER,
            )
            transaction.set_rollback(True)
        plan = "\n".join(row[0] for row in rows)
        # The jobs are picked by the ordered index, filtered on the way, never sorted; what the
        # UPDATE joins them with is the planner's business (a seq scan of a 200-row table).
        assert "Index Scan using doctorjob_job_claim_any on doctorjob_job c" in plan, (kind, plan)
        assert "Seq Scan on doctorjob_job c" not in plan and "Sort" not in plan, (kind, plan)


def test_the_settings_relays_are_built_with_their_options():
    from doctorjob.relays import build

    relay = build("custom")
    assert isinstance(relay, FileRelay) and relay.name == "custom"
    assert str(relay.path) == django_settings.DOCTORJOB["RELAYS"]["custom"]["OPTIONS"]["path"]


@override_settings(DOCTORJOB={"RELAYS": {"mine": {"BACKEND": "tests.testapp.relays.FileRelay", "QUEUES": ["q1"]}}})
def test_relay_settings_are_read_lazily_and_follow_overrides():
    assert relayed().queues == ["q1"]


def test_retention_prunes_relayed_jobs_as_it_prunes_succeeded_ones():
    from datetime import timedelta

    from django.utils import timezone

    from doctorjob import maintenance

    old, recent, queued = (enqueue("tests.relay.custom", {"n": n}) for n in range(3))
    Job.objects.filter(pk=old.pk).update(status=Status.RELAYED, finished_at=timezone.now() - timedelta(days=8))
    Job.objects.filter(pk=recent.pk).update(status=Status.RELAYED, finished_at=timezone.now() - timedelta(days=6))
    assert maintenance.prune_succeeded(connection.alias, timedelta(days=7)) == (1, False)
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, queued.pk}


def test_doctorjob_testing_run_jobs_leaves_relay_jobs_queued():
    from doctorjob.testing import assert_enqueued, run_jobs

    enqueue("tests.relay.custom", {"n": 1})
    enqueue("tests.relay.any", {"n": 2}, queue="to-redis")
    assert [r.job.name for r in run_jobs()] == []
    assert_enqueued("tests.relay.custom", {"n": 1}, count=1)
