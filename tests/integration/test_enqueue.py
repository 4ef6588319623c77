"""enqueue() and enqueue_many(): the job is written in the caller's transaction, with the
options it was given, or not at all."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.utils import ConnectionDoesNotExist
from django.test.utils import override_settings
from django.utils import timezone

from doctorjob import (
    InvalidEnqueue,
    InvalidPayload,
    TransactionRequired,
    UnknownJob,
    enqueue,
    enqueue_many,
    outbox,
)
from doctorjob.models import Job, Status
from tests.testapp.jobs import noop
from tests.testapp.models import Client

pytestmark = pytest.mark.django_db

# Committed rows, seen from other connections; only these apps' tables are flushed afterwards.
transactional = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])


def seen_by_another_connection(pk: int) -> bool:
    """Whether a worker (another connection) can see job ``pk`` right now."""
    found: list[bool] = []

    def look() -> None:
        try:
            found.append(Job.objects.filter(pk=pk).exists())
        finally:
            connection.close()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return found[0]


class WriteTo:
    """A database router that sends doctorjob's writes to one alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def db_for_write(self, model, **hints):
        return self.alias if model._meta.app_label == "doctorjob" else None


# -- transactions -----------------------------------------------------------------------------


def test_rolled_back_enqueue_leaves_no_job():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Client.objects.create(email="a@example.com")
        enqueue("tests.noop", {"n": 1})
        raise ZeroDivisionError
    assert not Job.objects.exists()
    assert not Client.objects.exists()


@transactional
def test_committed_enqueue_is_invisible_to_other_connections_until_commit():
    with transaction.atomic():
        job = enqueue("tests.noop", {"n": 1})
        assert Job.objects.filter(pk=job.pk).exists(), "written at once on the caller's connection"
        assert not seen_by_another_connection(job.pk)
    assert seen_by_another_connection(job.pk)
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED


@transactional
def test_enqueue_outside_a_transaction_autocommits():
    job = enqueue("tests.noop")
    assert seen_by_another_connection(job.pk)


def test_enqueue_writes_on_the_using_alias_not_the_routers_choice():
    with override_settings(DATABASE_ROUTERS=[WriteTo("elsewhere")]):
        with pytest.raises(ConnectionDoesNotExist):
            enqueue("tests.noop")  # proves the router is asked when `using` is not given
        job = enqueue("tests.noop", using="default")
    assert job._state.db == "default"
    assert Job.objects.using("default").filter(pk=job.pk).exists()


def test_enqueue_many_writes_on_the_using_alias_not_the_routers_choice():
    with override_settings(DATABASE_ROUTERS=[WriteTo("elsewhere")]):
        with pytest.raises(ConnectionDoesNotExist):
            enqueue_many([("tests.noop", {})])
        jobs = enqueue_many([("tests.noop", {}), ("tests.noop", {})], using="default")
    assert Job.objects.using("default").filter(pk__in=[j.pk for j in jobs]).count() == 2


@transactional
@override_settings(DOCTORJOB={"REQUIRE_TRANSACTION": True})
def test_require_transaction_refuses_autocommit_and_writes_nothing():
    with pytest.raises(TransactionRequired, match=r"(?i)transaction.*atomic") as excinfo:
        enqueue("tests.noop")
    assert "REQUIRE_TRANSACTION" in str(excinfo.value)
    with pytest.raises(TransactionRequired):
        enqueue_many([("tests.noop", {})])
    assert not Job.objects.exists()


@transactional
@override_settings(DOCTORJOB={"REQUIRE_TRANSACTION": True})
def test_require_transaction_allows_enqueue_inside_atomic():
    with transaction.atomic():
        job = enqueue("tests.noop")
        enqueue_many([("tests.noop", {})])
    assert Job.objects.filter(pk=job.pk).exists()
    assert Job.objects.count() == 2


# -- what gets written ------------------------------------------------------------------------


def test_enqueue_returns_the_saved_job():
    job = enqueue("tests.noop", {"n": 1})
    assert job.pk is not None and not job._state.adding
    saved = Job.objects.get(pk=job.pk)
    assert (saved.name, saved.payload, saved.status, saved.attempts) == ("tests.noop", {"n": 1}, Status.QUEUED, 0)
    assert saved.run_at == job.run_at


@pytest.mark.parametrize("many", [False, True])
def test_returned_jobs_are_complete_model_instances(many):
    """enqueue_many builds its Job objects without Model.__init__: each must still hold every
    field (a missing one would be 'deferred' and cost a query) and save like any instance."""
    job = (
        enqueue_many([("tests.noop", {"n": 1}), ("tests.noop", {"n": 2})])[1]
        if many
        else enqueue("tests.noop", {"n": 2})
    )
    assert job.get_deferred_fields() == set()
    stored = Job.objects.get(pk=job.pk)
    assert {f.attname: getattr(job, f.attname) for f in Job._meta.concrete_fields} == {
        f.attname: getattr(stored, f.attname) for f in Job._meta.concrete_fields
    }
    job.priority = 7
    job.save(update_fields=["priority"])
    assert Job.objects.get(pk=job.pk).priority == 7 and Job.objects.count() == (2 if many else 1)


def test_enqueue_accepts_the_decorated_function():
    job = enqueue(noop, {"n": 2})
    assert Job.objects.get(pk=job.pk).name == "tests.noop"


def test_missing_payload_is_stored_as_an_empty_object():
    job = enqueue("tests.noop")
    assert Job.objects.get(pk=job.pk).payload == {}


def test_job_options_default_to_those_of_its_decorator():
    job = Job.objects.get(pk=enqueue("integration.defaults").pk)
    assert (job.queue, job.priority, job.max_attempts) == ("emails", 7, 4)


def test_enqueue_options_override_the_decorator():
    job = enqueue("integration.defaults", queue="urgent", priority=0, max_attempts=1)
    job = Job.objects.get(pk=job.pk)
    assert (job.queue, job.priority, job.max_attempts) == ("urgent", 0, 1)


def test_job_without_delay_runs_now():
    before = timezone.now()
    job = Job.objects.get(pk=enqueue("tests.noop").pk)
    assert before <= job.run_at <= timezone.now()


@pytest.mark.parametrize("delay", [timedelta(minutes=5), 300, 300.0], ids=["timedelta", "int", "float"])
def test_delay_postpones_the_run(delay):
    before = timezone.now()
    job = Job.objects.get(pk=enqueue("tests.noop", delay=delay).pk)
    after = timezone.now()
    assert before + timedelta(seconds=300) <= job.run_at <= after + timedelta(seconds=300)


def test_run_at_is_stored_as_given():
    when = timezone.now() + timedelta(days=2, microseconds=123)
    job = Job.objects.get(pk=enqueue("tests.noop", run_at=when).pk)
    assert job.run_at == when


# -- idempotency keys -------------------------------------------------------------------------


def test_second_enqueue_with_a_key_returns_the_first_job_and_writes_nothing():
    first = enqueue("tests.noop", {"n": 1}, key="login-link:1")
    again = enqueue("tests.noop", {"n": 2}, key="login-link:1", delay=60)
    assert again.pk == first.pk
    assert again.payload == {"n": 1}
    saved = Job.objects.get()
    assert (saved.payload, saved.run_at) == ({"n": 1}, first.run_at)


@transactional
def test_duplicate_key_in_the_same_transaction_keeps_the_transaction_usable():
    with transaction.atomic():
        client = Client.objects.create(email="a@example.com")
        first = enqueue("tests.noop", {"n": 1}, key=f"login-link:{client.pk}")
        again = enqueue("tests.noop", {"n": 2}, key=f"login-link:{client.pk}")
        # Further queries in the same atomic block must still work (no aborted transaction).
        Client.objects.create(email="b@example.com")
        assert Job.objects.count() == 1
    assert again.pk == first.pk
    assert Client.objects.count() == 2
    assert Job.objects.get().payload == {"n": 1}


@transactional
def test_key_held_by_a_committed_job_returns_that_job_inside_a_later_transaction():
    first = enqueue("tests.noop", {"n": 1}, key="k")
    with transaction.atomic():
        again = enqueue("tests.noop", {"n": 2}, key="k")
        Client.objects.create(email="a@example.com")
    assert again.pk == first.pk
    assert Job.objects.count() == 1
    assert Client.objects.count() == 1


def test_key_is_free_again_once_its_job_is_rolled_back():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue("tests.noop", key="k")
        raise ZeroDivisionError
    job = enqueue("tests.noop", {"n": 2}, key="k")
    assert Job.objects.get(key="k").pk == job.pk


# -- enqueue_many ------------------------------------------------------------------------------


def test_enqueue_many_accepts_pairs_and_dicts_in_order():
    run_at = timezone.now() + timedelta(hours=1)
    jobs = enqueue_many(
        [
            ("tests.noop", {"n": 0}),
            {"job": noop, "payload": {"n": 1}, "priority": 5, "queue": "q", "max_attempts": 2},
            {"job": "tests.noop", "run_at": run_at},
            {"job": "integration.defaults", "delay": 10},
        ]
    )
    saved = [Job.objects.get(pk=j.pk) for j in jobs]
    assert [j.payload for j in saved] == [{"n": 0}, {"n": 1}, {}, {}]
    assert (saved[1].priority, saved[1].queue, saved[1].max_attempts) == (5, "q", 2)
    assert saved[2].run_at == run_at
    assert saved[3].queue == "emails" and saved[3].run_at > timezone.now()


def test_enqueue_many_of_nothing_writes_nothing(count_inserts):
    with count_inserts() as inserts:
        assert enqueue_many([]) == []
    assert inserts() == 0


def test_enqueue_many_accepts_a_generator():
    jobs = enqueue_many(("tests.noop", {"n": i}) for i in range(3))
    assert [Job.objects.get(pk=j.pk).payload["n"] for j in jobs] == [0, 1, 2]


def test_enqueue_many_returns_each_item_its_own_row():
    jobs = enqueue_many([("tests.noop", {"n": i}) for i in range(50)])
    assert len({j.pk for j in jobs}) == 50
    stored = dict(Job.objects.values_list("pk", "payload"))
    assert [stored[j.pk] for j in jobs] == [{"n": i} for i in range(50)]


FIELDS = (
    "name",
    "queue",
    "payload",
    "priority",
    "run_at",
    "max_attempts",
    "key",
    "created_at",
    "version",
    "status",
    "attempts",
)


@pytest.mark.parametrize("varying", [True, False], ids=["options-differ", "options-shared"])
def test_enqueue_many_stores_every_rows_own_options(varying):
    """Columns whose value differs between rows and columns every row shares are written
    differently on PostgreSQL (an array or one value); both must store each row as given."""
    when = timezone.now() + timedelta(hours=1)
    items = [
        {
            "job": "tests.noop",
            "payload": {"i": i},
            "priority": i % 3 if varying else 5,
            "queue": ("a", "b")[i % 2] if varying else "c",
            "run_at": when + timedelta(seconds=i if varying else 0),
            "max_attempts": 1 + i if varying else 9,
            "key": (f"k{i}" if i % 2 else None) if varying else None,
        }
        for i in range(6)
    ]
    jobs = enqueue_many(items)
    stored = {j.pk: j for j in Job.objects.all()}
    assert len(stored) == 6
    for item, job in zip(items, jobs):
        assert [getattr(stored[job.pk], f) for f in FIELDS] == [getattr(job, f) for f in FIELDS]
        assert (job.payload, job.priority, job.queue, job.run_at, job.max_attempts, job.key) == (
            item["payload"],
            item["priority"],
            item["queue"],
            item["run_at"],
            item["max_attempts"],
            item["key"],
        )


@pytest.mark.parametrize("bad", [False, True], ids=["written", "refused"])
@pytest.mark.parametrize("was_enabled", [True, False])
def test_enqueue_many_leaves_the_garbage_collector_as_it_found_it(bad, was_enabled):
    import gc

    items = [("tests.noop", {"n": 1}), ("tests.noop", {"n": object()} if bad else {})]
    (gc.enable if was_enabled else gc.disable)()
    try:
        if bad:
            with pytest.raises(InvalidPayload):
                enqueue_many(items)
        else:
            enqueue_many(items)
        assert gc.isenabled() is was_enabled
    finally:
        gc.enable()


def test_enqueue_many_without_keys_is_one_insert(count_inserts):
    with count_inserts() as inserts:
        enqueue_many([("tests.noop", {"n": i}) for i in range(20)])
    assert inserts() == 1
    assert Job.objects.count() == 20


@pytest.mark.postgresql
def test_enqueue_many_with_keys_is_one_insert_on_postgresql(count_inserts):
    enqueue("tests.noop", key="existing")
    items = [{"job": "tests.noop", "payload": {"n": i}, "key": f"k{i}"} for i in range(20)]
    with count_inserts() as inserts:
        enqueue_many([*items, {"job": "tests.noop", "key": "existing"}, ("tests.noop", {})])
    assert inserts() == 1
    assert Job.objects.count() == 22


@pytest.mark.postgresql
def test_enqueue_many_writes_70000_jobs_in_one_insert_despite_the_parameter_limit(count_inserts):
    with count_inserts() as inserts:
        jobs = enqueue_many(("tests.noop", {"n": i}) for i in range(70_000))
    assert inserts() == 1
    assert len({j.pk for j in jobs}) == 70_000
    assert Job.objects.count() == 70_000
    last = jobs[-1]
    assert Job.objects.get(pk=last.pk).payload == {"n": 69_999}


@pytest.mark.postgresql
def test_enqueue_many_writes_a_batch_too_big_for_one_jsonb_in_parts(count_inserts, monkeypatch):
    """The payloads travel as one JSON document, which PostgreSQL caps at 256 MiB: past
    BATCH_JSON_LIMIT the batch is written in halves, every job once and in order, keys held."""
    monkeypatch.setattr(outbox, "BATCH_JSON_LIMIT", 60)  # about five {"n":…} payloads
    items = [{"job": "tests.noop", "payload": {"n": i}, "key": f"k{i % 9}" if i % 2 else None} for i in range(24)]
    with count_inserts() as inserts:
        jobs = enqueue_many(items)
    assert inserts() > 1
    first_use = {}
    for item in items:
        if item["key"]:
            first_use.setdefault(item["key"], item["payload"])
    expected = [first_use[item["key"]] if item["key"] else item["payload"] for item in items]
    assert [j.payload for j in jobs] == expected, "a repeated key returns the job its first use wrote"
    stored = {j.pk: (j.key, j.payload) for j in Job.objects.all()}
    assert len(stored) == 12 + 9
    assert all(stored[j.pk] == (j.key, j.payload) for j in jobs)


def test_enqueue_many_with_mixed_keys_returns_existing_jobs_for_held_keys():
    held = enqueue("tests.noop", {"n": "held"}, key="held")
    jobs = enqueue_many(
        [
            ("tests.noop", {"n": 0}),
            {"job": "tests.noop", "payload": {"n": 1}, "key": "held"},
            {"job": "tests.noop", "payload": {"n": 2}, "key": "new"},
            ("tests.noop", {"n": 3}),
            {"job": "tests.noop", "payload": {"n": 4}, "key": "new"},
        ]
    )
    assert jobs[1].pk == held.pk
    assert jobs[4].pk == jobs[2].pk, "a key repeated within one call makes one job"
    assert len({j.pk for j in jobs}) == 4
    stored = dict(Job.objects.values_list("pk", "payload"))
    assert [stored[j.pk] for j in jobs] == [{"n": 0}, {"n": "held"}, {"n": 2}, {"n": 3}, {"n": 2}]
    assert [j.payload for j in jobs] == [stored[j.pk] for j in jobs], "each job returned is the one stored"
    assert Job.objects.count() == 4


# -- bad input: a clear error and nothing written ----------------------------------------------


def test_unknown_job_name_suggests_close_names():
    with pytest.raises(UnknownJob, match=r"unknown job 'tests\.nop'.*did you mean 'tests\.noop'"):
        enqueue("tests.nop")
    assert not Job.objects.exists()


def test_undecorated_function_is_refused():
    def not_a_job(payload, ctx):
        pass

    with pytest.raises(UnknownJob, match="@doctorjob.job"):
        enqueue(not_a_job)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("payload", "where", "type_name"),
    [
        ({"when": datetime(2026, 1, 1)}, "payload['when']", "datetime"),
        ({"ratio": math.nan}, "payload['ratio']", "float"),
        ({"tags": {"a", "b"}}, "payload['tags']", "set"),
        ({"by_id": {1: "one"}}, "payload['by_id'] key 1", "int"),
        ({"rows": [1, {"blob": b"x"}]}, "payload['rows'][1]['blob']", "bytes"),
    ],
    ids=["datetime", "nan", "set", "int-key", "nested-bytes"],
)
def test_payload_that_is_not_json_names_the_key_path_and_type(payload, where, type_name):
    with pytest.raises(InvalidPayload) as excinfo:
        enqueue("tests.noop", payload)
    message = str(excinfo.value)
    assert where in message
    assert type_name in message
    assert "tests.noop" in message
    assert not Job.objects.exists()


def test_schema_violation_names_the_job_and_the_problem():
    with pytest.raises(InvalidPayload) as excinfo:
        enqueue("tests.typed", {"client_id": "seven"})
    message = str(excinfo.value)
    assert "tests.typed" in message
    assert "payload['client_id']" in message
    assert "integer" in message
    assert not Job.objects.exists()


def test_missing_required_property_is_a_schema_violation():
    with pytest.raises(InvalidPayload, match="client_id.*required"):
        enqueue("tests.typed", {})
    assert not Job.objects.exists()


def test_payload_matching_the_schema_is_accepted():
    job = enqueue("tests.typed", {"client_id": 7})
    assert Job.objects.get(pk=job.pk).payload == {"client_id": 7}


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"delay": 5, "run_at": timezone.now()}, r"delay.*run_at"),
        ({"delay": -1}, r"delay must not be negative"),
        ({"delay": timedelta(seconds=-1)}, r"delay must not be negative"),
        ({"delay": "5"}, r"delay must be a timedelta or seconds"),
        ({"delay": math.inf}, r"delay must be a timedelta or seconds"),
        ({"run_at": datetime(2030, 1, 1)}, r"run_at must be timezone-aware"),
        ({"run_at": "2030-01-01"}, r"run_at must be a datetime"),
        ({"priority": "high"}, r"priority must be an integer"),
        ({"queue": ""}, r"a queue name is 1 to 100 letters"),
        ({"max_attempts": 0}, r"max_attempts must be an integer from 1 to 2147483647"),
        ({"key": ""}, r"key must be a non-empty string"),
        ({"key": "k" * 256}, r"key must be a non-empty string of at most 255"),
    ],
    ids=[
        "delay-and-run_at",
        "negative-delay",
        "negative-timedelta",
        "delay-str",
        "delay-inf",
        "naive-run_at",
        "run_at-str",
        "priority-str",
        "empty-queue",
        "zero-attempts",
        "empty-key",
        "long-key",
    ],
)
def test_bad_option_is_refused_naming_the_job_and_argument(options, pattern):
    with pytest.raises(InvalidEnqueue, match=pattern) as excinfo:
        enqueue("tests.noop", **options)
    assert "tests.noop" in str(excinfo.value)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        (("tests.noop", {"when": datetime(2026, 1, 1)}), InvalidPayload, r"payload\['when'\]"),
        (("tests.nope", {}), UnknownJob, "tests.nope"),
        ({"job": "tests.noop", "delay": -1}, InvalidEnqueue, "delay"),
        ({"job": "tests.noop", "paylod": {}}, InvalidEnqueue, r"item 2: unknown key\(s\) \['paylod'\]"),
        ({"payload": {}}, InvalidEnqueue, "item 2: no 'job' key"),
        ("tests.noop", InvalidEnqueue, "item 2: expected a .job, payload. pair or a dict"),
        (("tests.noop", {}, "extra"), InvalidEnqueue, "item 2: expected"),
    ],
    ids=["not-json", "unknown-job", "negative-delay", "misspelt-key", "no-job", "bare-name", "triple"],
)
def test_bad_enqueue_many_item_writes_nothing_even_for_the_valid_items_before_it(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        enqueue_many([("tests.noop", {"n": 0}), {"job": "tests.noop", "key": "k"}, bad])
    assert not Job.objects.exists()


# -- prepared statements (PostgreSQL) ---------------------------------------------------------


def prepared_inserts() -> list[str]:
    """This connection's prepared statements that insert jobs."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall() if "INSERT INTO doctorjob_job" in row[0]]


@pytest.mark.postgresql
@transactional
def test_enqueue_prepares_its_insert_once_and_nothing_of_the_applications():
    connection.close()
    for n in range(3):
        enqueue("tests.noop", {"n": n})
    Client.objects.create(email="a@example.com")
    for _ in range(10):
        list(Client.objects.all())
    assert len(prepared_inserts()) == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone()[0] == 1, "the application's queries stay unprepared, as Django configures"
    assert connection.connection.prepare_threshold is None


@pytest.mark.postgresql
@transactional
def test_prepared_insert_survives_a_rolled_back_transaction():
    """psycopg deallocates prepared statements on rollback; the next enqueue prepares again."""
    connection.close()
    enqueue("tests.noop", {"n": 0})
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue("tests.noop", {"n": 1})
        raise ZeroDivisionError
    with transaction.atomic():
        enqueue("tests.noop", {"n": 2})
        sid = (getattr(transaction, "savepoint_create", None) or transaction.savepoint)()
        enqueue("tests.noop", {"n": 3})
        transaction.savepoint_rollback(sid)
        enqueue("tests.noop", {"n": 4})
    assert sorted(p["n"] for p in Job.objects.values_list("payload", flat=True)) == [0, 2, 4]


@pytest.mark.postgresql
@transactional
@pytest.mark.parametrize(
    "database, doctorjob",
    [
        ({"DISABLE_SERVER_SIDE_CURSORS": True}, {}),  # Django's setting for PgBouncer transaction pooling
        ({}, {"PREPARE": False}),
    ],
)
def test_enqueue_prepares_nothing_behind_pgbouncer_or_when_told_not_to(settings, database, doctorjob):
    connection.close()
    settings.DOCTORJOB = doctorjob
    original = dict(connection.settings_dict)
    connection.settings_dict.update(database)
    try:
        enqueue("tests.noop", {"n": 1})
        assert prepared_inserts() == []
    finally:
        connection.settings_dict.clear()
        connection.settings_dict.update(original)
    assert Job.objects.count() == 1


@pytest.mark.postgresql
def test_the_job_table_has_no_check_constraint_to_rebuild_on_every_insert():
    """PostgreSQL rebuilds each CHECK constraint from its stored text for every INSERT statement:
    the three of PositiveIntegerField cost enqueue() 7–10 µs of the database's CPU."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'doctorjob_job'::regclass AND contype = 'c'")
        assert cursor.fetchall() == []


def test_job_counters_still_refuse_negative_values_when_validated():
    job = enqueue("tests.noop")
    job.attempts = job.max_attempts = job.version = -1
    with pytest.raises(ValidationError) as refused:
        job.full_clean()
    assert set(refused.value.message_dict) == {"attempts", "max_attempts", "version"}


# -- NOTIFY (PostgreSQL) ----------------------------------------------------------------------


@pytest.fixture
def listener():
    """A connection of its own LISTENing on doctorjob's channel, as a worker's; ``heard()`` returns
    the queues notified so far (the sender commits before calling it, so they have arrived)."""
    import psycopg

    settings_dict = connection.settings_dict
    conn = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or None,
        autocommit=True,
    )
    conn.execute("LISTEN doctorjob")

    def heard() -> list[str]:
        conn.execute("SELECT 1")  # a round trip collects what has arrived
        return sorted(n.payload for n in conn.notifies(timeout=0.2))

    yield heard
    conn.close()


@pytest.mark.postgresql
@transactional
def test_enqueue_notifies_its_queue_at_commit_only(listener):
    with transaction.atomic():
        enqueue("tests.noop", {"n": 1})
        enqueue("tests.noop", {"n": 2}, queue="emails")
        assert listener() == [], "nothing is heard of a job before its transaction commits"
    assert listener() == ["default", "emails"]
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue("tests.noop", {"n": 3})
        raise ZeroDivisionError
    assert listener() == [], "a rolled-back job wakes nobody"


@pytest.mark.postgresql
@transactional
def test_enqueue_many_notifies_each_queue_with_a_runnable_job_once(listener):
    enqueue_many(
        [
            ("tests.noop", {"n": 1}),
            ("tests.noop", {"n": 2}),
            {"job": "tests.noop", "queue": "emails"},
            {"job": "tests.noop", "queue": "emails"},
            {"job": "tests.noop", "queue": "later", "delay": 3600},
        ]
    )
    assert listener() == ["default", "emails"], "a delayed job wakes nobody now"


@pytest.mark.postgresql
@transactional
@pytest.mark.parametrize("many", [False, True])
def test_enqueue_of_a_held_key_notifies_nobody(listener, many):
    enqueue("tests.noop", key="k1")
    enqueue("tests.noop", key="k2")
    listener()
    if many:
        enqueue_many([{"job": "tests.noop", "key": "k1"}, {"job": "tests.noop", "key": "k2"}])
    else:
        enqueue("tests.noop", key="k1")
    assert listener() == []
    assert Job.objects.count() == 2


@pytest.mark.postgresql
@transactional
def test_notify_setting_off_sends_nothing(listener, settings):
    settings.DOCTORJOB = {"NOTIFY": False}
    enqueue("tests.noop")
    enqueue_many([("tests.noop", {}), ("tests.noop", {})])
    assert listener() == []
    assert Job.objects.count() == 3
