"""DOCTORJOB['RELAYS'], @job(relay=, task=) and run_jobs --relay's options, without a database."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test.utils import override_settings

from doctorjob import job
from doctorjob.checks import check_relays
from doctorjob.relays import CeleryRelay, KombuRelay, Relay

CUSTOM = {"BACKEND": "tests.testapp.relays.FileRelay", "OPTIONS": {"path": "/tmp/x"}}
CELERY = {"BACKEND": "doctorjob.relays.CeleryRelay", "OPTIONS": {"app": "tests.relay.celery_app.app"}}


def ids_for(relays) -> list[tuple[str, str]]:
    with override_settings(DOCTORJOB={"RELAYS": {"celery": CELERY, "custom": CUSTOM, **relays}}):
        return [(e.id, e.msg) for e in check_relays(None)]


def test_the_tests_relays_pass_the_checks():
    assert check_relays(None) == []


X = "DOCTORJOB['RELAYS']['x']"


@pytest.mark.parametrize(
    "relay, problem",
    [
        ("not a dict", ("doctorjob.E020", f"{X} must be a dict with 'BACKEND', got 'not a dict'")),
        ({**CUSTOM, "OPTION": {}}, ("doctorjob.E020", f"{X} has an unknown key 'OPTION'")),
        ({**CUSTOM, "OPTIONS": [1]}, ("doctorjob.E020", f"{X}['OPTIONS'] must be a dict of keyword arguments")),
        (
            {**CUSTOM, "QUEUES": "emails"},
            (
                "doctorjob.E020",
                f"{X}['QUEUES'] must be a list of queue names (a queue name is 1 to 100 letters, digits, '_', "
                "'-', '.' or ':'), got 'emails'",
            ),
        ),
        ({"BACKEND": "no.such.Relay"}, ("doctorjob.E021", f"{X}['BACKEND'] cannot be imported: No module named 'no'")),
        (
            {"BACKEND": "doctorjob.job"},
            (
                "doctorjob.E021",
                f"{X}['BACKEND'] must be the dotted path of a doctorjob.relays.Relay subclass, got 'doctorjob.job'",
            ),
        ),
    ],
)
def test_a_malformed_relay_is_an_error_saying_what_is_wrong(relay, problem):
    assert problem in ids_for({"x": relay})


def test_one_queue_in_two_relays_is_an_error():
    problems = ids_for({"a": {**CUSTOM, "QUEUES": ["q"]}, "b": {**CUSTOM, "QUEUES": ["q"]}})
    assert ("doctorjob.E023", "queue 'q' is in the QUEUES of two relays: 'a' and 'b'") in problems


def test_a_job_naming_an_unknown_relay_is_an_error():
    with override_settings(DOCTORJOB={"RELAYS": {"custom": CUSTOM}}):
        problems = [(e.id, e.msg) for e in check_relays(None)]
    assert (
        "doctorjob.E022",
        "job 'tests.relay.celery' names relay 'celery', which DOCTORJOB['RELAYS'] does not define",
    ) in problems


@pytest.mark.parametrize(
    "options, message",
    [
        ({"relay": ""}, "@job relay must be a non-empty name of at most 200 characters, got ''"),
        ({"relay": 3}, "@job relay must be a non-empty name of at most 200 characters, got 3"),
        ({"relay": "r", "task": "x" * 201}, "@job task must be a non-empty name of at most 200 characters"),
        ({"task": "t"}, "@job task is the name a relay publishes the job under: give relay= too"),
    ],
)
def test_bad_relay_options_of_job_are_refused(isolated_registry, options, message):
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(").replace(")", r"\)")):
        job("tests.unit.bad_relay", **options)(lambda payload, ctx: None)
    assert "tests.unit.bad_relay" not in isolated_registry


def test_relay_and_task_are_part_of_the_definitions_options(isolated_registry):
    @job("tests.unit.relayed", relay="celery")
    def relayed(payload, ctx): ...

    assert relayed.job.options["relay"] == "celery" and relayed.job.options["task"] == "tests.unit.relayed"


def test_the_builtin_relays_refuse_bad_options_in_one_sentence():
    with pytest.raises(TypeError, match="CeleryRelay app must be the dotted path of a Celery app, got 3"):
        CeleryRelay(app=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="KombuRelay exchange must be a non-empty string, got ''"):
        KombuRelay(url="amqp://", exchange="")
    with pytest.raises(NotImplementedError, match="Relay must implement publish"):
        Relay().publish([])


@pytest.mark.parametrize("option", [["--concurrency", "2"], ["--max-jobs", "3"], ["--shutdown-timeout", "1"]])
def test_run_jobs_relay_refuses_the_options_of_handlers(option):
    with pytest.raises(CommandError, match="does not apply to --relay: a relay runs no handler"):
        call_command("run_jobs", "--relay", *option)


def test_run_jobs_relay_refuses_processes():
    with pytest.raises(CommandError, match="--processes does not apply to --relay"):
        call_command("run_jobs", "--relay", "--processes", "2")
