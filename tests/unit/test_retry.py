"""Backoff policy: pure arithmetic, no database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from doctorjob import Backoff
from doctorjob import retry as retry_module
from doctorjob.conf import DEFAULTS
from doctorjob.retry import make_backoff, retry_delay


@pytest.fixture
def no_jitter_draw(monkeypatch):
    """Pin random.random() so the jitter stretch is exact; returns a setter."""

    def pin(value: float) -> None:
        monkeypatch.setattr(retry_module.random, "random", lambda: value)

    pin(0.0)
    return pin


def test_delay_grows_exponentially_from_the_base():
    backoff = Backoff(base=2, factor=3, cap=10_000, jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [2, 6, 18, 54]


def test_delay_never_exceeds_the_cap():
    backoff = Backoff(base=1, factor=2, cap=60, jitter=0)
    assert backoff.delay(6) == 32
    assert backoff.delay(7) == 60
    assert backoff.delay(30) == 60


def test_jitter_stretches_the_delay_by_at_most_its_fraction(no_jitter_draw):
    backoff = Backoff(base=10, factor=2, cap=10_000, jitter=0.5)
    assert backoff.delay(1) == 10
    no_jitter_draw(0.999999)
    assert 14.99 < backoff.delay(1) < 15
    no_jitter_draw(0.5)
    assert backoff.delay(2) == 25


def test_jitter_never_pushes_the_delay_past_the_cap(no_jitter_draw):
    no_jitter_draw(0.999999)
    assert Backoff(base=100, cap=120, jitter=0.5).delay(1) == 120


def test_jittered_delays_differ_between_jobs_failing_together():
    backoff = Backoff(base=10, jitter=0.5)
    delays = {backoff.delay(1) for _ in range(50)}
    assert len(delays) > 1
    assert all(10 <= d <= 15 for d in delays)


def test_default_first_retry_waits_at_least_a_second():
    backoff = make_backoff(None, DEFAULTS["BACKOFF"])
    assert all(backoff.delay(1) >= 1 for _ in range(50))


def test_zero_base_retries_at_once():
    assert Backoff(base=0).delay(5) == 0


def test_delay_stays_at_the_cap_for_a_very_late_attempt():
    assert Backoff(base=1, factor=2, cap=3600, jitter=0).delay(2000) == 3600


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"base": -1}, "base must be a number >= 0"),
        ({"cap": -5}, "cap must be a number >= 0"),
        ({"jitter": -0.1}, "jitter must be a number >= 0"),
        ({"base": "1"}, "base must be a number"),
        ({"base": True}, "base must be a number"),
        ({"factor": 0.5}, "factor must be >= 1"),
    ],
)
def test_invalid_backoff_is_refused(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        Backoff(**options)


def test_backoff_is_immutable():
    with pytest.raises(AttributeError):
        Backoff().base = 5  # type: ignore[misc]


def test_dict_spec_is_merged_over_the_global_default():
    assert make_backoff({"base": 5}, {"base": 1, "factor": 3, "cap": 100, "jitter": 0}) == Backoff(
        base=5, factor=3, cap=100, jitter=0
    )


def test_no_spec_uses_the_global_default():
    assert make_backoff(None, {"base": 2, "factor": 2, "cap": 9, "jitter": 0.1}) == Backoff(2, 2, 9, 0.1)


def test_backoff_and_callable_specs_are_used_as_given():
    backoff = Backoff(base=3)
    assert make_backoff(backoff, DEFAULTS["BACKOFF"]) is backoff

    def custom(attempt):
        return attempt * 7

    assert make_backoff(custom, DEFAULTS["BACKOFF"]) is custom


def test_unknown_backoff_key_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backoff key\(s\) \['bass'\]; use base, factor, cap, jitter"):
        make_backoff({"bass": 1}, DEFAULTS["BACKOFF"])


def test_backoff_of_another_type_is_refused():
    with pytest.raises(TypeError, match="backoff must be a dict, a Backoff or a callable, got int"):
        make_backoff(5, DEFAULTS["BACKOFF"])


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (lambda attempt: attempt * 10, 30.0),
        (lambda attempt: timedelta(minutes=attempt), 180.0),
        (lambda attempt: -5, 0.0),
        (Backoff(base=1, factor=2, jitter=0), 4.0),
    ],
    ids=["seconds", "timedelta", "negative-clamped", "Backoff"],
)
def test_retry_delay_is_seconds_whatever_the_backoff_returns(backoff, expected):
    assert retry_delay(backoff, 3) == expected
