"""System checks on a malformed DOCTORJOB setting; no database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.test.utils import override_settings

from doctorjob.checks import check_settings


def errors_for(value) -> list[checks.CheckMessage]:
    with override_settings(DOCTORJOB=value):
        return check_settings(None)


def test_no_setting_and_an_empty_setting_are_fine():
    assert check_settings(None) == []
    assert errors_for({}) == []


def test_every_default_value_passes():
    assert (
        errors_for(
            {
                "REQUIRE_TRANSACTION": True,
                "KEEP_SUCCEEDED": timedelta(days=1),
                "BACKOFF": {"base": 2},
                "NOTIFY": False,
                "LISTEN_DATABASE": "default",
                "PREPARE": False,
                "CONCURRENCY": 2,
                "BATCH_SIZE": 10,
                "POLL_INTERVAL": 0.5,
                "LEASE": 3,
                "SHUTDOWN_TIMEOUT": 0,
                "JOBS": {},
            }
        )
        == []
    )


def test_setting_that_is_not_a_dict_is_an_error():
    (error,) = errors_for(["LEASE", 10])
    assert (error.id, error.msg) == ("doctorjob.E001", "DOCTORJOB must be a dict")


def test_unknown_key_is_an_error_listing_the_known_keys():
    (error,) = errors_for({"LEASES": 10})
    assert error.id == "doctorjob.E002"
    assert "unknown key 'LEASES'" in error.msg
    assert "LEASE" in error.hint and "KEEP_SUCCEEDED" in error.hint


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("LEASE", 1, "a number of seconds from 3 to 86400"),
        ("LEASE", float("inf"), "a number of seconds from 3 to 86400"),
        ("LEASE", 1e12, "a number of seconds from 3 to 86400"),
        ("KEEP_SUCCEEDED", "7 days", "a timedelta from 0 to 3650 days"),
        ("KEEP_SUCCEEDED", timedelta(days=-1), "a timedelta from 0 to 3650 days"),
        ("KEEP_SUCCEEDED", timedelta.max, "a timedelta from 0 to 3650 days"),
        ("REQUIRE_TRANSACTION", "yes", "True or False"),
        ("CONCURRENCY", 0, "an integer from 1 to 1000"),
        ("BATCH_SIZE", True, "an integer from 1 to 10000"),
        ("BATCH_SIZE", 10**20, "an integer from 1 to 10000"),
        ("POLL_INTERVAL", 0, "a number of seconds from 0.001 to 3600"),
        ("SHUTDOWN_TIMEOUT", -1, "a number of seconds from 0 to 86400"),
        ("TIMEOUT", 0, "None or a number of seconds from 0.1 to 604800"),
        ("TIMEOUT", float("inf"), "None or a number of seconds from 0.1 to 604800"),
        (
            "MAX_PAYLOAD_BYTES",
            64 * 2**20,
            "an integer from 1 to 8 MiB (8388608), what every supported database accepts",
        ),
        ("BACKOFF", 5, "a dict with base, factor, cap, jitter"),
        ("LISTEN_DATABASE", "replica", "None, False or an alias in DATABASES"),
        ("PREPARE", "yes", "None, True or False"),
        ("JOBS", [], "a dict of job name -> overrides"),
    ],
)
def test_value_of_the_wrong_kind_is_an_error_naming_the_key_and_the_rule(key, value, expected):
    (error,) = [e for e in errors_for({key: value}) if e.id == "doctorjob.E003"]
    assert error.msg == f"DOCTORJOB[{key!r}] must be {expected}, got {value!r}"


@pytest.mark.parametrize(
    ("backoff", "problem"),
    [
        ({"base": -1}, "backoff base must be a number >= 0, got -1"),
        ({"factor": 0.5}, "backoff factor must be >= 1"),
        ({"bass": 1}, r"unknown backoff key(s) ['bass']"),
        ({"base": 1e12, "cap": 1e12}, "backoff base must be at most a year (3.1536e+07 seconds), got 1000000000000.0"),
    ],
)
def test_bad_backoff_is_an_error_saying_what_is_wrong(backoff, problem):
    (error,) = errors_for({"BACKOFF": backoff})
    assert error.id == "doctorjob.E004"
    assert problem in error.msg


def test_every_problem_is_reported_at_once():
    ids = sorted(e.id for e in errors_for({"NOPE": 1, "LEASE": 1, "BACKOFF": {"base": -1}}))
    assert ids == ["doctorjob.E002", "doctorjob.E003", "doctorjob.E004"]


def test_checks_run_with_manage_py_check():
    relays = django_settings.DOCTORJOB["RELAYS"]  # the test app's relay jobs name them (else E022)
    with override_settings(DOCTORJOB={"LEASE": 1, "KEEP_SUCCEEDED": "7 days", "RELAYS": relays}):
        found = {e.id for e in checks.run_checks() if e.id.startswith("doctorjob.E")}
    assert found == {"doctorjob.E003"}  # (on MySQL/MariaDB, W002 warns about the test app's singletons too)
    assert all(e.level == checks.ERROR for e in check_settings(None) + errors_for({"LEASE": 1}))
