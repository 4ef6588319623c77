"""Hostile input: every bad value is refused in Python before any SQL, naming it, with nothing
written and the caller's transaction usable; and what a handler raises or returns never kills
the worker (issue 13)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test.utils import override_settings

from doctorjob import InvalidEnqueue, InvalidPayload, enqueue, enqueue_many, job, operations
from doctorjob.models import DeadLetter, Job, Status
from doctorjob.payloads import MAX_DEPTH
from tests.testapp.jobs_issue4 import restored_registry

from .factories import DeadLetterFactory


def nested(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def refused(error: type[Exception], match: str, **kwargs) -> None:
    """enqueue(**kwargs) raises ``error`` inside atomic(), writes nothing, and the block goes on."""
    kwargs.setdefault("job", "tests.noop")
    with transaction.atomic():
        with pytest.raises(error, match=match):
            enqueue(**kwargs)
        assert Job.objects.count() == 0  # the transaction is still usable


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"text": "a\x00b"}, r"payload\['text'\] of job 'tests.noop' holds a NUL character"),
        ({"k\x00": 1}, r"payload key 'k\\x00' of job 'tests.noop' holds a NUL character"),
        ({"text": "x\udc80"}, r"payload\['text'\] of job 'tests.noop' holds a lone surrogate"),
        (nested(MAX_DEPTH + 1), rf"is nested deeper than {MAX_DEPTH} levels"),
        (nested(10_000), rf"is nested deeper than {MAX_DEPTH} levels"),
        ({"n": 10**5000}, r"payload\['n'\] of job 'tests.noop' is an integer of more than 4,000 digits"),
    ],
    ids=["nul", "nul-key", "surrogate", "too-deep", "ten-thousand-levels", "huge-int"],
)
def test_a_payload_the_databases_cannot_store_is_refused_before_any_sql(payload, match):
    refused(InvalidPayload, match, payload=payload)


@pytest.mark.django_db
def test_the_deepest_payload_allowed_is_written():
    job = enqueue("tests.noop", nested(MAX_DEPTH - 1))
    assert Job.objects.get(pk=job.pk).payload == nested(MAX_DEPTH - 1)


@pytest.mark.django_db
@override_settings(DOCTORJOB={"MAX_PAYLOAD_BYTES": 100})
def test_a_payload_larger_than_max_payload_bytes_is_refused_alone_or_in_a_batch():
    refused(
        InvalidPayload, r"payload of job 'tests.noop' is 1\d\d bytes of JSON; .*allows 100", payload={"blob": "x" * 100}
    )
    with transaction.atomic():
        with pytest.raises(InvalidPayload, match="allows 100"):
            enqueue_many([("tests.noop", {"n": i}) for i in range(20)] + [("tests.noop", {"blob": "x" * 100})])
        assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key": "k\x00"}, "key must be a non-empty string of at most 255 characters with no NUL"),
        ({"key": "k\udc80"}, "key must be .* lone surrogate"),
        ({"key": "k" * 256}, "key must be a non-empty string of at most 255 characters"),
        ({"priority": 2**31}, "priority must be an integer from -2147483648 to 2147483647"),
        ({"priority": -(2**31) - 1}, "priority must be an integer from"),
        ({"max_attempts": 2**31}, "max_attempts must be an integer from 1 to 2147483647"),
        ({"delay": 1e20}, "delay 1e\\+20 runs past the year 9999"),
        ({"delay": timedelta.max}, "runs past the year 9999"),
        ({"queue": "a,b"}, "a queue name is 1 to 100 letters, digits"),
        ({"queue": " a"}, "a queue name is"),
        ({"queue": "a" * 101}, "a queue name is"),
    ],
    ids=[
        "nul-key",
        "surrogate-key",
        "long-key",
        "big-priority",
        "small-priority",
        "big-max-attempts",
        "huge-delay",
        "timedelta-max",
        "comma-queue",
        "spaced-queue",
        "long-queue",
    ],
)
def test_an_option_the_databases_cannot_store_is_refused_before_any_sql(kwargs, match):
    refused(InvalidEnqueue, match, **kwargs)


@pytest.mark.django_db
def test_a_concurrency_key_over_255_characters_is_refused():
    with restored_registry():
        job("hostile.per_key", concurrency_key=lambda payload: payload["k"])(lambda payload, ctx: None)
        refused(
            InvalidPayload,
            "concurrency key of job 'hostile.per_key' must be at most 255 characters",
            job="hostile.per_key",
            payload={"k": "x" * 300},
        )


def test_a_queue_name_run_jobs_could_not_select_is_refused_by_job():
    for queue in ("a,b", " padded", "", "tab\t"):
        with pytest.raises(ImproperlyConfigured, match="a queue name is 1 to 100 letters"):
            job("hostile.bad_queue", queue=queue)


# -- what a handler raises or returns ----------------------------------------------------------


@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_poison_results_and_errors_fail_or_are_kept_escaped_and_the_worker_runs_everything_else(run_worker):
    jobs = {
        kind: enqueue("integration.poison", {"kind": kind})
        for kind in ("unprintable", "nul-error", "nul-result", "huge-int", "fine")
    }
    others = enqueue_many([("tests.noop", {"n": i}) for i in range(20)])
    run_worker(concurrency=2, batch_size=50)

    rows = {kind: Job.objects.get(pk=j.pk) for kind, j in jobs.items()}
    assert rows["unprintable"].status == Status.DEAD
    assert rows["unprintable"].error == "Unprintable (its message could not be read: str() raised)"
    assert rows["nul-error"].status == Status.DEAD
    assert rows["nul-error"].error == "ValueError: a NUL \\x00 and a lone surrogate \\udc80"
    assert "a NUL \\x00" in rows["nul-error"].traceback
    assert rows["nul-result"].status == Status.SUCCEEDED
    assert rows["nul-result"].result == {"text": "a\\x00b", "lone": "x\\udc80y", "key\\x00": [1, "\\x00"]}
    # Not JSON (Python's encoder refuses it), so, like any result that is not JSON, not saved.
    assert (rows["huge-int"].status, rows["huge-int"].result) == (Status.SUCCEEDED, None)
    assert rows["fine"].status == Status.SUCCEEDED
    assert {o.status for o in Job.objects.filter(pk__in=[o.pk for o in others])} == {Status.SUCCEEDED}
    assert DeadLetter.objects.count() == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a CHECK constraint added for the test")
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_an_outcome_the_database_refuses_fails_its_own_job_alone(run_worker):
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE doctorjob_job ADD CONSTRAINT refuse_poison CHECK (result IS NULL OR NOT result ? 'poison')"
        )
    try:
        bad = enqueue("integration.poison", {"kind": "refused"})
        good = enqueue_many([("integration.poison", {"kind": "fine"}) for _ in range(10)])
        run_worker(concurrency=1, batch_size=20)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE doctorjob_job DROP CONSTRAINT refuse_poison")
    bad = Job.objects.get(pk=bad.pk)
    assert (bad.status, bad.attempts) == (Status.DEAD, 1)
    assert bad.error.startswith("the worker could not store this attempt's outcome (succeeded): IntegrityError")
    assert all(Job.objects.get(pk=j.pk).status == Status.SUCCEEDED for j in good)
    assert all(Job.objects.get(pk=j.pk).attempts == 1 for j in good), "no other job of the batch ran again"


# -- requeue races ------------------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite serialises writers: no two requeues overlap")
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_retry_and_requeue_of_the_same_dead_work_at_the_same_moment_queue_it_once():
    for _ in range(15):
        letter = DeadLetterFactory()
        dead = letter.job
        start = threading.Barrier(2)
        outcomes = []

        def requeue():
            start.wait()
            try:
                outcomes.append(("requeue", operations.requeue(letter).pk))
            except InvalidEnqueue as exc:
                outcomes.append(("requeue refused", str(exc)))
            finally:
                connection.close()

        def retry():
            start.wait()
            try:
                outcomes.append(("retry", operations.retry([dead])))
            finally:
                connection.close()

        threads = [threading.Thread(target=requeue), threading.Thread(target=retry)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        queued = Job.objects.filter(status=Status.QUEUED).count()
        assert queued == 1, f"the same work queued {queued} times: {outcomes}"
        Job.objects.all().delete()
        DeadLetter.objects.all().delete()


@pytest.mark.django_db
def test_keys_that_differ_only_in_case_accents_or_a_trailing_space_are_different_jobs():
    keys = ["Key", "key", "kéy", "key ", "KEY"]
    jobs = [enqueue("tests.noop", {"i": i}, key=k) for i, k in enumerate(keys)]
    assert len({job.pk for job in jobs}) == len(keys)
    assert [Job.objects.get(pk=job.pk).key for job in jobs] == keys
    assert enqueue("tests.noop", {"i": 9}, key="kéy").pk == jobs[2].pk


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite serialises writers: no two enqueues overlap")
@pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])
def test_concurrent_enqueues_of_one_key_some_rolling_back_write_one_job_and_break_no_transaction():
    """Eight callers enqueue the same key at once, each in its own transaction, and half of them
    roll back after holding the key a moment: every caller's transaction stays usable, no
    deadlock reaches anyone, and exactly one job is left, from a caller that committed."""
    callers = 8
    for round_ in range(10):
        start = threading.Barrier(callers)
        outcomes: list[tuple[int, str]] = []

        def caller(i: int) -> None:
            start.wait()
            try:
                with transaction.atomic():
                    enqueue("tests.noop", {"caller": i}, key=f"same-{round_}")
                    # The transaction is still usable after the enqueue, whoever won the key.
                    assert Job.objects.filter(key=f"same-{round_}").exists()
                    if i % 2:
                        raise _RollBack
                outcomes.append((i, "committed"))
            except _RollBack:
                outcomes.append((i, "rolled back"))
            except Exception as exc:  # noqa: BLE001 - any error is the failure under test
                outcomes.append((i, f"{type(exc).__name__}: {exc}"))
            finally:
                connection.close()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        errors = [o for o in outcomes if o[1] not in ("committed", "rolled back")]
        assert not errors, f"round {round_}: {errors}"
        rows = list(Job.objects.filter(key=f"same-{round_}").values_list("payload", flat=True))
        assert len(rows) == 1 and rows[0]["caller"] % 2 == 0, rows


class _RollBack(Exception):
    pass
