"""doctorjob's settings object: defaults, user overrides, reset when tests change settings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test.utils import override_settings

from doctorjob.conf import DEFAULTS, settings


def test_defaults_apply_without_a_doctorjob_setting():
    assert settings.REQUIRE_TRANSACTION is False
    assert settings.KEEP_SUCCEEDED == timedelta(days=7)
    assert settings.BACKOFF == {"base": 1.0, "factor": 2.0, "cap": 3600.0, "jitter": 0.5}
    assert (settings.CONCURRENCY, settings.BATCH_SIZE, settings.LEASE) == (4, 100, 30.0)
    assert settings.NOTIFY is True
    assert settings.LISTEN_DATABASE is None


def test_user_values_override_only_their_keys():
    with override_settings(DOCTORJOB={"LEASE": 10, "REQUIRE_TRANSACTION": True}):
        assert settings.LEASE == 10
        assert settings.REQUIRE_TRANSACTION is True
        assert settings.CONCURRENCY == DEFAULTS["CONCURRENCY"]


def test_override_is_forgotten_once_it_ends():
    assert settings.LEASE == 30.0  # read (and cached) before the override
    with override_settings(DOCTORJOB={"LEASE": 10}):
        assert settings.LEASE == 10
    assert settings.LEASE == 30.0


def test_nested_overrides_each_take_effect():
    with override_settings(DOCTORJOB={"LEASE": 10}):
        with override_settings(DOCTORJOB={"LEASE": 20}):
            assert settings.LEASE == 20
        assert settings.LEASE == 10


def test_a_change_to_another_setting_keeps_the_cache():
    with override_settings(DOCTORJOB={"LEASE": 10}):
        assert settings.LEASE == 10
        with override_settings(TIME_ZONE="Europe/Paris"):
            assert settings.LEASE == 10


def test_partial_backoff_is_merged_over_the_default_backoff():
    with override_settings(DOCTORJOB={"BACKOFF": {"base": 5}}):
        assert settings.BACKOFF == {"base": 5, "factor": 2.0, "cap": 3600.0, "jitter": 0.5}
    assert DEFAULTS["BACKOFF"]["base"] == 1.0, "the defaults are never modified"


def test_malformed_doctorjob_setting_falls_back_to_the_defaults():
    # The system check reports it; reading settings must not crash meanwhile.
    with override_settings(DOCTORJOB=["LEASE", 10]):
        assert settings.LEASE == 30.0


def test_unknown_setting_is_an_attribute_error():
    with pytest.raises(AttributeError):
        settings.NO_SUCH_SETTING  # noqa: B018


def test_per_job_backoff_is_merged_over_the_global_backoff_when_it_runs():
    from doctorjob import Backoff
    from doctorjob.registry import JobType

    job_type = JobType("unit.slow", print, backoff={"base": 10})
    with override_settings(DOCTORJOB={"BACKOFF": {"factor": 3, "jitter": 0}}):
        assert job_type.backoff_policy() == Backoff(base=10, factor=3, cap=3600.0, jitter=0)
    assert job_type.backoff_policy() == Backoff(base=10, factor=2, cap=3600.0, jitter=0.5)
