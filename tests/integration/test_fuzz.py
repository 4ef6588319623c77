"""Hypothesis against enqueue(), enqueue_many(), the requeue form and the DOCTORJOB checks: every
input either writes exactly what it says or raises doctorjob's own error, with nothing written
and the caller's transaction still usable (issue 13)."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from django.db import transaction
from django.test.utils import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doctorjob import DoctorJobError, enqueue, enqueue_many
from doctorjob.admin import RequeueForm
from doctorjob.checks import check_settings
from doctorjob.models import Job

from .factories import DeadLetterFactory

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Text of every kind: NUL, lone surrogates, astral characters, quotes and backslashes.
text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=20)
# (Integers of more than 4,300 digits are refused too, see test_hostile_input: Hypothesis cannot
# print them.)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=30
)
deep = st.integers(min_value=25, max_value=60).map(lambda n: _nested(n))
payloads = values | deep | st.sets(st.integers(), max_size=2) | st.builds(object)


def _nested(levels: int):
    value: object = "leaf"
    for _ in range(levels):
        value = {"a": [value]}
    return value


def _as_json(value):
    """What a payload reads back as: tuples become lists."""
    return json.loads(json.dumps(value))


def same(stored, sent) -> bool:
    """The stored payload is the one sent. A float may come back as an int of the same value:
    PostgreSQL's jsonb keeps numbers as decimals and prints 4.75e16 as 47500000000000000."""
    if isinstance(sent, float) and isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return float(stored) == sent
    if isinstance(sent, dict) and isinstance(stored, dict):
        return stored.keys() == sent.keys() and all(same(stored[k], sent[k]) for k in sent)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(stored) == len(sent) and all(same(a, b) for a, b in zip(stored, sent))
    return type(stored) is type(sent) and stored == sent


options = st.fixed_dictionaries(
    {},
    optional={
        "key": st.none() | text | st.text(min_size=250, max_size=300),
        "priority": st.integers(min_value=-(2**40), max_value=2**40),
        "max_attempts": st.integers(min_value=-5, max_value=2**40),
        "delay": st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(min_value=-10, max_value=10**15)
        | st.just(timedelta.max),
        "queue": text | st.sampled_from(["default", "emails", "a,b", " q"]),
    },
)


def written_or_refused(call) -> list[Job] | None:
    """Run ``call`` in a transaction: it returns the jobs, or raises DoctorJobError having written
    nothing while the transaction stays usable. Anything else fails the test."""
    with transaction.atomic():
        before = Job.objects.count()
        try:
            jobs = call()
        except DoctorJobError:
            assert Job.objects.count() == before  # nothing written, and the block is still usable
            jobs = None
        transaction.set_rollback(True)  # each example starts from the same table
    return jobs


@FUZZ
@given(payload=payloads, options=options)
def test_enqueue_writes_what_it_says_or_raises_its_own_error(payload, options):
    def call():
        job = enqueue("tests.noop", payload, **options)
        stored = Job.objects.get(pk=job.pk)
        assert same(stored.payload, _as_json(payload) if payload is not None else {})
        return [job]

    written_or_refused(call)


@FUZZ
@given(items=st.lists(st.tuples(st.just("tests.noop"), payloads), min_size=1, max_size=5))
def test_enqueue_many_writes_all_or_nothing(items):
    def call():
        jobs = enqueue_many(items)
        assert same(
            [Job.objects.get(pk=j.pk).payload for j in jobs], [_as_json(p) if p is not None else {} for _, p in items]
        )
        return jobs

    written_or_refused(call)


@FUZZ
@given(
    body=text
    | st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v, allow_nan=True))
    | st.just("[" + "9" * 5000 + "]")
)
def test_the_requeue_form_accepts_json_or_says_what_is_wrong(body):
    letter = DeadLetterFactory.build()
    form = RequeueForm({"payload": body}, dead_letter=letter)
    if form.is_valid():
        assert form.cleaned_data["payload"] is not None
    else:
        assert form.errors["payload"]


setting_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | text
    | st.just(timedelta.max)
    | st.dictionaries(text, st.integers() | st.floats(), max_size=3)
)


@FUZZ
@given(
    setting=st.dictionaries(
        st.sampled_from(
            [
                "LEASE",
                "BATCH_SIZE",
                "CONCURRENCY",
                "POLL_INTERVAL",
                "SHUTDOWN_TIMEOUT",
                "KEEP_SUCCEEDED",
                "BACKOFF",
                "TIMEOUT",
                "MAX_PAYLOAD_BYTES",
            ]
        ),
        setting_values,
        max_size=3,
    )
)
def test_the_checks_accept_only_settings_a_worker_can_run_with(setting):
    with override_settings(DOCTORJOB=setting):
        errors = check_settings(None)
    if errors:
        return
    from doctorjob.conf import settings as doctorjob_settings
    from doctorjob.retry import make_backoff, retry_delay
    from doctorjob.worker import Worker

    with override_settings(DOCTORJOB=setting):
        Worker()  # the numbers a worker runs with
        delay = retry_delay(make_backoff(None, doctorjob_settings.BACKOFF), 40)
        assert math.isfinite(delay)
        assert timedelta(seconds=delay) + doctorjob_settings.KEEP_SUCCEEDED  # no overflow
