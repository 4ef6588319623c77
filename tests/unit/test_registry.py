"""The @job decorator and name lookups; no database."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from doctorjob import Backoff, InvalidPayload, UnknownJob, job
from doctorjob.registry import JobType, get_job_type

pytestmark = pytest.mark.usefixtures("isolated_registry")


def handler(payload, ctx):
    return payload


def test_job_registers_the_function_under_its_name(isolated_registry):
    decorated = job("unit.send", queue="emails", max_attempts=5, priority=2)(handler)
    assert decorated is handler, "the function is returned unchanged"
    job_type = isolated_registry["unit.send"]
    assert (job_type.name, job_type.queue, job_type.max_attempts, job_type.priority) == ("unit.send", "emails", 5, 2)
    assert job_type.func is handler
    assert handler.job is job_type


def test_name_defaults_to_the_functions_dotted_path(isolated_registry):
    def send_report(payload, ctx):
        pass

    job()(send_report)
    expected = f"{__name__}.test_name_defaults_to_the_functions_dotted_path.<locals>.send_report"
    assert expected in isolated_registry


def test_bare_decorator_registers_with_the_defaults(isolated_registry):
    def bare(payload, ctx):
        pass

    assert job(bare) is bare
    job_type = bare.job
    assert isolated_registry[job_type.name] is job_type
    assert (job_type.queue, job_type.max_attempts, job_type.priority, job_type.atomic) == ("default", 3, 0, False)


def test_registering_the_same_function_again_is_harmless(isolated_registry):
    job("unit.same")(handler)
    job("unit.same")(handler)
    assert isolated_registry["unit.same"].func is handler


def test_two_functions_under_one_name_are_refused():
    def first(payload, ctx):
        pass

    def second(payload, ctx):
        pass

    job("unit.twice")(first)
    with pytest.raises(ImproperlyConfigured, match=r"'unit\.twice' is registered twice: by .*first and by .*second"):
        job("unit.twice")(second)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"queue": ""}, "a queue name is 1 to 100 letters"),
        ({"queue": 5}, "a queue name is 1 to 100 letters"),
        ({"timeout": 0}, "timeout must be a number from 0.1 to 604800, got 0"),
        ({"timeout": "1m"}, "timeout must be a number from 0.1 to 604800, got '1m'"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 2147483647"),
        ({"max_attempts": True}, "max_attempts must be an integer from 1 to 2147483647"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer from 1 to 2147483647"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"schema": {"type": "no-such-type"}}, "schema is not a valid JSON Schema"),
        ({"backoff": {"base": -1}}, "backoff: backoff base must be a number >= 0"),
        ({"backoff": {"bass": 1}}, r"backoff: unknown backoff key\(s\)"),
        ({"backoff": "fast"}, "backoff: backoff must be a dict, a Backoff or a callable"),
    ],
)
def test_bad_decorator_options_fail_at_import_time(options, pattern):
    with pytest.raises(ImproperlyConfigured, match=pattern):
        job("unit.bad", **options)(handler)


def test_refused_decorator_registers_nothing(isolated_registry):
    with pytest.raises(ImproperlyConfigured):
        job("unit.bad", max_attempts=0)(handler)
    assert "unit.bad" not in isolated_registry


def test_backoff_may_be_a_backoff_or_a_function():
    job("unit.a", backoff=Backoff(base=5))(handler)
    job("unit.b", backoff=lambda attempt: 1)(lambda payload, ctx: None)
    assert get_job_type("unit.a").backoff_policy() == Backoff(base=5)
    assert get_job_type("unit.b").backoff_policy()(7) == 1


def test_lookup_by_name_or_function_or_job_type():
    job("unit.lookup")(handler)
    job_type = get_job_type("unit.lookup")
    assert get_job_type(handler) is job_type
    assert get_job_type(job_type) is job_type


def test_unknown_name_suggests_close_names():
    job("unit.send_login_link")(handler)
    with pytest.raises(
        UnknownJob, match=r"unknown job 'unit\.send_loggin_link'; did you mean 'unit\.send_login_link'\?"
    ):
        get_job_type("unit.send_loggin_link")


def test_unknown_name_without_close_names_says_where_jobs_are_declared():
    with pytest.raises(UnknownJob) as excinfo:
        get_job_type("zzzzzzzzzzzzzzzzzzzzzzzz")
    assert str(excinfo.value) == (
        "unknown job 'zzzzzzzzzzzzzzzzzzzzzzzz'; jobs are declared with @job in a jobs.py "
        "module of an app in INSTALLED_APPS (<app>/jobs.py), imported at start-up"
    )


def test_undecorated_function_is_not_a_job():
    def plain(payload, ctx):
        pass

    with pytest.raises(UnknownJob, match="is not a job: decorate it with @doctorjob.job"):
        get_job_type(plain)


def test_job_given_as_something_else_is_refused():
    with pytest.raises(UnknownJob, match="a job is a registered name or a @job function, got int"):
        get_job_type(42)


def test_unknown_job_is_a_lookup_error():
    assert issubclass(UnknownJob, LookupError)


def test_schema_violation_names_the_path_the_job_and_the_problem():
    job_type = JobType(
        "unit.typed",
        handler,
        schema={
            "type": "object",
            "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer"}}}},
        },
    )
    with pytest.raises(InvalidPayload) as excinfo:
        job_type.validate({"user": {"id": "7"}})
    message = str(excinfo.value)
    assert message.startswith("payload['user']['id'] does not match the schema of job 'unit.typed'")
    assert "'7' is not of type 'integer'" in message


def test_payload_matching_the_schema_passes():
    JobType("unit.typed", handler, schema={"type": "object", "required": ["id"]}).validate({"id": 1})


def test_job_without_schema_accepts_any_payload():
    JobType("unit.free", handler).validate({"anything": [1, "two"]})


def test_a_schedule_whose_ticks_would_fail_the_schema_is_refused_at_import_time():
    from django.core.exceptions import ImproperlyConfigured

    from doctorjob import job

    schema = {"type": "object", "required": ["client_id"]}
    with pytest.raises(
        ImproperlyConfigured,
        match=r"@job schedule's payload \(\{\}, as none is given\): payload "
        r"does not match the schema",
    ):
        job("unit.scheduled_without_payload", schedule="0 3 * * *", schema=schema)(lambda payload, ctx: None)
