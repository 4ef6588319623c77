"""Job definitions and versions: sync_jobs, JobVersion rows, the version a job is enqueued with,
minimal versions, the W001 check, DOCTORJOB['JOBS'] overrides, enqueue_job, and the admin's run
now / pause / resume on definitions and queues."""

from __future__ import annotations

import logging
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.test.utils import override_settings
from django.urls import reverse

from doctorjob import definitions, enqueue
from doctorjob.checks import check_job_overrides, check_versions
from doctorjob.models import DeadLetter, Job, JobDefinition, JobExecution, JobVersion, QueueState, Status
from doctorjob.registry import registry
from tests.testapp.jobs_issue4 import register_adhoc, restored_registry

from .factories import JobFactory

pytestmark = pytest.mark.django_db
in_worker = pytest.mark.django_db(transaction=True, available_apps=["doctorjob", "tests.testapp"])


@pytest.fixture
def register():
    """``register(name, **options)`` registers a job for this test only."""
    with restored_registry():
        yield register_adhoc


def sync_jobs() -> list[str]:
    out = StringIO()
    call_command("sync_jobs", stdout=out)
    return out.getvalue().splitlines()


def definition(name: str) -> JobDefinition:
    return JobDefinition.objects.get(name=name)


def doctorjob_settings(**jobs) -> override_settings:
    """``override_settings`` of DOCTORJOB['JOBS'] (the names have dots, hence a dict)."""
    return override_settings(DOCTORJOB={"JOBS": jobs})


# -- sync_jobs ----------------------------------------------------------------------------------


def test_sync_jobs_adds_a_definition_per_registered_job_then_reports_no_change(register):
    register("issue4.adhoc", queue="issue4-a")

    assert sync_jobs() == [f"added {name}" for name in sorted(registry)]
    assert sync_jobs() == ["job definitions are up to date"]
    row = definition("issue4.adhoc")
    assert (row.queue, row.version, row.min_version, row.paused, row.retired) == ("issue4-a", 1, 1, False, False)
    assert set(JobDefinition.objects.values_list("name", flat=True)) == set(registry)
    assert set(QueueState.objects.values_list("name", flat=True)) == {t.queue for t in registry.values()}


def test_sync_jobs_reports_a_changed_job(register):
    register("issue4.adhoc", queue="issue4-a")
    sync_jobs()
    register("issue4.adhoc", queue="issue4-b", version=2)

    assert sync_jobs() == ["changed issue4.adhoc"]
    assert (definition("issue4.adhoc").queue, definition("issue4.adhoc").version) == ("issue4-b", 2)


def test_sync_jobs_retires_a_job_the_code_no_longer_has_and_keeps_its_row_and_history(register):
    register("issue4.adhoc")
    sync_jobs()
    job = enqueue("issue4.adhoc")
    registry.pop("issue4.adhoc")

    assert sync_jobs() == ["retired issue4.adhoc"]
    assert sync_jobs() == ["job definitions are up to date"]
    row = definition("issue4.adhoc")
    assert row.retired
    assert list(row.versions.values_list("number", flat=True)) == [1]
    assert Job.objects.filter(pk=job.pk).exists()

    register("issue4.adhoc")  # the job comes back in a later deploy
    assert sync_jobs() == ["changed issue4.adhoc"]
    assert not definition("issue4.adhoc").retired


# -- versions -----------------------------------------------------------------------------------


def test_each_version_gets_a_row_with_the_options_schedule_and_payload_it_had(register):
    register("issue4.adhoc", queue="issue4-a", schedule="0 6 * * *", payload={"n": 1})
    definitions.sync()
    register("issue4.adhoc", queue="issue4-b", schedule="0 7 * * *", payload={"n": 2}, version=2, min_version=2)
    definitions.sync()
    definitions.sync()

    one, two = JobVersion.objects.filter(definition__name="issue4.adhoc").order_by("number")
    assert (one.number, one.schedule, one.payload, one.options["queue"]) == (1, "0 6 * * *", {"n": 1}, "issue4-a")
    assert (two.number, two.schedule, two.payload, two.options["queue"]) == (2, "0 7 * * *", {"n": 2}, "issue4-b")
    assert one.first_seen <= two.first_seen
    row = definition("issue4.adhoc")
    assert (row.version, row.min_version, row.schedule, row.payload) == (2, 2, "0 7 * * *", {"n": 2})


def test_a_job_records_the_version_it_was_enqueued_with():
    assert enqueue("issue4.versioned").version == 3
    assert enqueue("tests.noop").version == 1
    with doctorjob_settings(**{"issue4.versioned": {"version": 4}}):
        assert enqueue("issue4.versioned").version == 4


@in_worker
def test_a_job_below_the_minimal_version_is_skipped_with_its_reason_and_never_retried(run_worker):
    # Enqueued by code of version 1, before the deploy that made version 2 the minimum.
    old = JobFactory(name="issue4.versioned", version=1, max_attempts=3)
    supported = JobFactory(name="issue4.versioned", version=2)
    current = enqueue("issue4.versioned")

    worker = run_worker()
    run_worker()  # a later worker does not pick the skipped job up again

    reason = "version 1 of job 'issue4.versioned' is below its minimal supported version 2"
    old.refresh_from_db()
    assert (old.status, old.attempts, old.error) == (Status.SKIPPED, 1, reason)
    assert old.finished_at is not None and old.lease_expires_at is None
    [execution] = JobExecution.objects.filter(job=old)
    assert (execution.outcome, execution.attempt, execution.error) == ("skipped", 1, reason)
    assert execution.worker == worker.id and execution.started_at <= execution.finished_at
    assert not DeadLetter.objects.exists()
    assert list(Job.objects.filter(pk__in=[supported.pk, current.pk]).values_list("status", flat=True)) == [
        Status.SUCCEEDED,
        Status.SUCCEEDED,
    ]


# -- the W001 check -----------------------------------------------------------------------------


def run_check(*, databases=None) -> str:
    err = StringIO()
    call_command("check", databases=databases, stdout=StringIO(), stderr=err)
    return err.getvalue()


def test_options_changed_without_a_new_version_warn_w001_with_check_database(register):
    register("issue4.adhoc", queue="issue4-a", schedule="0 6 * * *")
    definitions.sync()
    register("issue4.adhoc", queue="issue4-b", schedule="0 7 * * *")  # same version 1

    output = run_check(databases=["default"])

    assert "doctorjob.W001" in output
    assert "job 'issue4.adhoc': options and schedule changed since version 1 was recorded on" in output
    assert "Increment the job's version" in output
    assert "W001" not in run_check()  # a database check: only with --database
    [warning] = check_versions(databases=["default"])
    assert (warning.id, warning.level) == ("doctorjob.W001", logging.WARNING)


def test_a_changed_default_payload_warns_w001_and_a_new_version_silences_it(register):
    register("issue4.adhoc", payload={"n": 1})
    definitions.sync()
    register("issue4.adhoc", payload={"n": 2})
    [warning] = check_versions(databases=["default"])
    assert "job 'issue4.adhoc': default payload changed since version 1" in warning.msg

    register("issue4.adhoc", payload={"n": 2}, version=2)
    definitions.sync()

    assert check_versions(databases=["default"]) == []


def test_unchanged_jobs_raise_no_w001():
    definitions.sync()
    assert check_versions(databases=["default"]) == []


@in_worker
def test_a_starting_worker_warns_about_options_changed_without_a_new_version(register, run_worker, caplog):
    register("issue4.adhoc", max_attempts=3)
    definitions.sync()
    register("issue4.adhoc", max_attempts=5)

    run_worker()

    assert any(
        r.levelno == logging.WARNING
        and "job 'issue4.adhoc': options changed" in r.getMessage()
        and "doctorjob.W001" in r.getMessage()
        for r in caplog.records
    )


# -- DOCTORJOB['JOBS'] overrides: validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "check_id", "message"),
    [
        (
            {"issue4.reprot": {}},
            "doctorjob.E010",
            "DOCTORJOB['JOBS']['issue4.reprot']: no job is registered under that name",
        ),
        (
            {"issue4.report": {"colour": "red"}},
            "doctorjob.E011",
            "DOCTORJOB['JOBS']['issue4.report']: unknown key 'colour'",
        ),
        ({"issue4.report": "nightly"}, "doctorjob.E011", "DOCTORJOB['JOBS']['issue4.report']: must be a dict"),
        (
            {"issue4.report": {"schedule": "61 * * * *"}},
            "doctorjob.E012",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'schedule': '61 * * * *' is not a valid cron expression",
        ),
        (
            {"issue4.report": {"schedule": "every day"}},
            "doctorjob.E012",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'schedule': 'every day' is not a cron expression of 5 fields",
        ),
        (
            {"issue4.report": {"timezone": "Mars/Olympus_Mons"}},
            "doctorjob.E013",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'timezone': unknown time zone 'Mars/Olympus_Mons'",
        ),
        (
            {"issue4.report": {"payload": {"format": "docx"}}},
            "doctorjob.E014",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'payload': payload['format'] does not match the schema of job "
            "'issue4.report'",
        ),
        (
            {"issue4.report": {"payload": {"format": "csv\x00"}}},
            "doctorjob.E014",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'payload': payload['format'] of job 'issue4.report' holds a NUL",
        ),
        (
            {"issue4.report": {"payload": {"format": {1, 2}}}},
            "doctorjob.E014",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'payload': payload['format'] of job 'issue4.report' is a set",
        ),
        (
            {"tests.typed": {"schedule": "0 3 * * *"}},
            "doctorjob.E014",
            "DOCTORJOB['JOBS']['tests.typed']: the schedule's payload (the job's default) fails: payload does not "
            "match the schema of job 'tests.typed'",
        ),
        (
            {"issue4.report": {"version": 0}},
            "doctorjob.E015",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'version': must be an integer from 1 to 2147483647, got 0",
        ),
        (
            {"issue4.report": {"version": 2**40}},
            "doctorjob.E015",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'version': must be an integer from 1 to 2147483647",
        ),
        (
            {"issue4.report": {"paused": "yes"}},
            "doctorjob.E016",
            "DOCTORJOB['JOBS']['issue4.report']: bad 'paused': must be True or False, got 'yes'",
        ),
    ],
    ids=[
        "unknown-job",
        "unknown-key",
        "not-a-dict",
        "bad-cron",
        "not-cron",
        "bad-timezone",
        "payload-vs-schema",
        "payload-nul",
        "payload-not-json",
        "schedule-payload-vs-schema",
        "bad-version",
        "huge-version",
        "bad-paused",
    ],
)
def test_each_bad_override_is_an_error_naming_the_job_and_the_key(jobs, check_id, message):
    with doctorjob_settings(**jobs):
        [error] = check_job_overrides()
    assert error.id == check_id
    assert error.msg.startswith(message), error.msg
    assert error.is_serious()


def test_an_unknown_job_name_is_answered_with_the_close_names():
    with doctorjob_settings(**{"issue4.reprot": {"paused": True}}):
        [error] = check_job_overrides()
    assert error.hint.startswith("Did you mean 'issue4.report'"), error.hint


def test_manage_py_check_refuses_bad_overrides_with_their_ids():
    with doctorjob_settings(**{"issue4.reprot": {}, "issue4.report": {"schedule": "* * *", "timezone": "Nowhere"}}):
        with pytest.raises(SystemCheckError) as refused:
            run_check()
    for check_id in ("doctorjob.E010", "doctorjob.E012", "doctorjob.E013"):
        assert check_id in str(refused.value)


def test_valid_overrides_pass_the_checks():
    overrides = {
        "issue4.report": {
            "schedule": "*/30 * * * * *",
            "payload": {"format": "pdf"},
            "version": 2,
            "paused": True,
            "timezone": "Europe/Paris",
        }
    }
    with doctorjob_settings(**overrides):
        assert check_job_overrides() == []


# -- DOCTORJOB['JOBS'] overrides: applied by sync -----------------------------------------------


def test_sync_applies_the_overrides_of_schedule_payload_version_and_pause():
    definitions.sync()
    overrides = {
        "issue4.report": {"schedule": "0 6 * * 1-5", "payload": {"format": "pdf"}, "version": 2, "paused": True}
    }
    with doctorjob_settings(**overrides):
        assert definitions.sync() == ["changed issue4.report"]
        job = enqueue("issue4.report", {"format": "csv"})

    row = definition("issue4.report")
    assert (row.schedule, row.payload, row.version, row.paused) == ("0 6 * * 1-5", {"format": "pdf"}, 2, True)
    assert row.scheduled_since is not None
    assert job.version == 2
    # The version records what the code declares; the override lives on the definition only.
    assert JobVersion.objects.get(definition=row, number=2).payload == {"format": "csv"}


def test_sync_never_clears_a_pause_set_by_an_operator(register):
    register("issue4.adhoc", queue="issue4-a")
    definitions.sync()
    JobDefinition.objects.filter(name="issue4.adhoc").update(paused=True)  # the admin's pause action

    register("issue4.adhoc", queue="issue4-b", version=2)  # a deploy changes the job
    assert definitions.sync() == ["changed issue4.adhoc"]
    registry.pop("issue4.adhoc")
    definitions.sync()
    register("issue4.adhoc", queue="issue4-b", version=2)  # retired, then back
    definitions.sync()

    assert definition("issue4.adhoc").paused


def test_an_override_pauses_and_resumes_a_job_explicitly():
    definitions.sync()
    with doctorjob_settings(**{"issue4.report": {"paused": True}}):
        definitions.sync()
    assert definition("issue4.report").paused
    definitions.sync()  # the override is gone: the pause it set stays
    assert definition("issue4.report").paused
    with doctorjob_settings(**{"issue4.report": {"paused": False}}):
        definitions.sync()
    assert not definition("issue4.report").paused


# -- enqueue_job --------------------------------------------------------------------------------


def enqueue_job(*args: str, command: str = "enqueue_job") -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def test_enqueue_job_enqueues_with_the_jobs_default_payload():
    output = enqueue_job("issue4.report")

    job = Job.objects.get()
    assert (job.name, job.queue, job.payload, job.status) == ("issue4.report", "issue4", {"format": "csv"}, "queued")
    assert output == f"enqueued job {job.pk} (issue4.report) on queue issue4\n"


def test_enqueue_job_uses_the_definitions_payload_as_set_by_an_override():
    with doctorjob_settings(**{"issue4.report": {"payload": {"format": "pdf"}}}):
        definitions.sync()
    enqueue_job("issue4.report")
    assert Job.objects.get().payload == {"format": "pdf"}


def test_enqueue_job_with_a_payload_enqueues_that_payload():
    enqueue_job("issue4.report", "--payload", '{"format": "pdf", "rows": 10}')
    assert Job.objects.get().payload == {"format": "pdf", "rows": 10}


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["issue4.reprot"], "unknown job 'issue4.reprot'; did you mean 'issue4.report'"),
        (["issue4.report", "--payload", '{"format": "pdf"'], "--payload is not valid JSON: Expecting ',' delimiter"),
        (
            ["issue4.report", "--payload", '{"format": "docx"}'],
            "payload['format'] does not match the schema of job 'issue4.report'",
        ),
    ],
    ids=["unknown-name", "bad-json", "payload-vs-schema"],
)
def test_enqueue_job_refuses_with_a_non_zero_exit_and_writes_nothing(args, complaint):
    with pytest.raises(CommandError) as refused:
        enqueue_job(*args)

    assert str(refused.value).startswith(complaint), str(refused.value)
    assert refused.value.returncode != 0  # run_from_argv exits with it
    assert not Job.objects.exists()


def test_run_job_is_a_deprecated_alias_of_enqueue_job():
    err = StringIO()
    out = StringIO()
    call_command("run_job", "issue4.report", stdout=out, stderr=err)
    assert out.getvalue() == f"enqueued job {Job.objects.get().pk} (issue4.report) on queue issue4\n"
    assert "run_job is deprecated and will be removed in doctorjob 0.3: use enqueue_job" in err.getvalue()


# -- pauses: workers do not claim paused work ---------------------------------------------------


@in_worker
def test_workers_do_not_claim_jobs_of_a_paused_definition_or_queue_until_resumed(run_worker):
    definitions.sync()
    JobDefinition.objects.filter(name="tests.noop").update(paused=True)
    QueueState.objects.filter(name="emails").update(paused=True)  # integration.defaults' queue
    paused_job = enqueue("tests.noop", {"n": 1})
    in_paused_queue = enqueue("integration.defaults")
    other = enqueue("tests.record_run")

    run_worker()

    statuses = lambda: [Job.objects.get(pk=j.pk).status for j in (paused_job, in_paused_queue, other)]  # noqa: E731
    assert statuses() == [Status.QUEUED, Status.QUEUED, Status.SUCCEEDED]
    assert Job.objects.filter(pk__in=[paused_job.pk, in_paused_queue.pk], attempts=0).count() == 2

    JobDefinition.objects.filter(name="tests.noop").update(paused=False)
    QueueState.objects.filter(name="emails").update(paused=False)
    run_worker()

    assert statuses() == [Status.SUCCEEDED] * 3


# -- the admin: run now, pause, resume ----------------------------------------------------------


@pytest.fixture
def staff(client):
    """Log ``client`` in as a staff user holding exactly the given doctorjob permissions."""

    def login(*codenames: str):
        user = User.objects.create_user(username="-".join(codenames) or "staff", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="doctorjob", codename__in=codenames)
        )
        client.force_login(user)
        return client

    return login


def post_action(client, model: str, action: str, rows):
    """POST the action as the changelist's form does; follow the redirect to the page showing
    its messages."""
    return client.post(
        reverse(f"admin:doctorjob_{model}_changelist"),
        {"action": action, "index": 0, "_selected_action": [r.pk for r in rows]},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_run_now_action_enqueues_the_definitions_with_their_default_payload(staff):
    client = staff("view_jobdefinition", "run_jobdefinition")
    definitions.sync()

    response = post_action(client, "jobdefinition", "run_now", [definition("issue4.report")])

    assert response.redirect_chain == [(reverse("admin:doctorjob_jobdefinition_changelist"), 302)]
    job = Job.objects.get()
    assert (job.name, job.payload, job.queue) == ("issue4.report", {"format": "csv"}, "issue4")
    assert messages_of(response) == [f"Enqueued 1 job: #{job.pk} issue4.report."]


def test_run_now_needs_the_run_permission(staff):
    client = staff("view_jobdefinition", "change_jobdefinition")
    definitions.sync()

    page = client.get(reverse("admin:doctorjob_jobdefinition_changelist")).content.decode()
    response = post_action(client, "jobdefinition", "run_now", [definition("issue4.report")])

    assert 'value="run_now"' not in page and 'value="pause"' in page
    assert messages_of(response) == ["No action selected."]
    assert not Job.objects.exists()


def test_pause_and_resume_actions_on_definitions(staff):
    client = staff("view_jobdefinition", "change_jobdefinition")
    definitions.sync()
    rows = [definition("issue4.report"), definition("tests.noop")]

    paused = post_action(client, "jobdefinition", "pause", rows)
    assert messages_of(paused) == ["Paused 2 jobs: workers will not claim them."]
    assert JobDefinition.objects.filter(paused=True).count() == 2

    resumed = post_action(client, "jobdefinition", "resume", rows[:1])
    assert messages_of(resumed) == ["Resumed 1 job."]
    assert list(JobDefinition.objects.filter(paused=True).values_list("name", flat=True)) == ["tests.noop"]


def test_pause_and_resume_of_definitions_need_the_change_permission(staff):
    client = staff("view_jobdefinition", "run_jobdefinition")
    definitions.sync()

    for action in ("pause", "resume"):
        response = post_action(client, "jobdefinition", action, [definition("issue4.report")])
        assert messages_of(response) == ["No action selected."]
    assert not JobDefinition.objects.filter(paused=True).exists()


def test_pause_and_resume_actions_on_queues(staff):
    client = staff("view_queuestate", "change_queuestate")
    definitions.sync()
    queue = QueueState.objects.get(name="issue4")

    assert messages_of(post_action(client, "queuestate", "pause", [queue])) == [
        "Paused 1 queue: workers will not claim from them."
    ]
    assert QueueState.objects.get(name="issue4").paused
    assert messages_of(post_action(client, "queuestate", "resume", [queue])) == ["Resumed 1 queue."]
    assert not QueueState.objects.get(name="issue4").paused


def test_pausing_a_queue_needs_the_change_permission(staff):
    client = staff("view_queuestate")
    definitions.sync()

    response = post_action(client, "queuestate", "pause", [QueueState.objects.get(name="issue4")])

    assert not response.context["action_form"]  # no action is offered at all
    assert not QueueState.objects.filter(paused=True).exists()
