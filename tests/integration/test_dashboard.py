"""The dashboard, the job page's buttons and links, the lists' counts and filters, and the
actions on whatever a filter matches, through real requests on a real database."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from doctorjob import enqueue_many, operations, stats
from doctorjob.admin import changelists
from doctorjob.models import DeadLetter, Job, JobDefinition, JobExecution, QueueState, Status, Worker

from .factories import DeadLetterFactory, JobFactory
from .test_admin import ESCAPED_XSS, XSS, messages_of

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:doctorjob_dashboard"


def staff(client: Client, *codenames: str) -> Client:
    user = User.objects.create_user(username=f"staff-{User.objects.count()}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="doctorjob", codename__in=codenames))
    client.force_login(user)
    return client


def execution(job: Job, outcome: str, minutes_ago: float) -> JobExecution:
    finished = timezone.now() - timedelta(minutes=minutes_ago)
    return JobExecution.objects.create(
        job=job, attempt=1, outcome=outcome, started_at=finished, finished_at=finished, duration=timedelta(0)
    )


# The dashboard


def test_dashboard_counts_statuses_and_queues_and_charts_the_last_hour(admin_client):
    JobFactory.create_batch(3, queue="emails", run_at=timezone.now() - timedelta(minutes=5))
    JobFactory(queue="emails", run_at=timezone.now() + timedelta(hours=1))
    done = JobFactory(succeeded=True)
    dead = JobFactory(dead=True)
    for minutes in (1, 1, 30):
        execution(done, "succeeded", minutes)
    execution(dead, "failed", 2)
    execution(dead, "failed", 90)  # older than an hour: not charted
    DeadLetterFactory(job=dead)

    response = admin_client.get(reverse(DASHBOARD))

    assert response.status_code == 200
    counts = response.context["statuses"]
    assert (counts["queued"], counts["succeeded"], counts["dead"]) == (
        stats.Counted(4),
        stats.Counted(1),
        stats.Counted(1),
    )
    emails = next(q for q, _ in response.context["queues"] if q.name == "emails")
    assert (emails.runnable, emails.scheduled) == (3, 1)
    assert response.context["queues"][[q.name for q, _ in response.context["queues"]].index("emails")][1].startswith(
        "5 min"
    )
    assert response.context["chart"]["totals"] == {"succeeded": 3, "failed": 1, "dead": 1}
    content = response.content.decode()
    assert content.count('<rect class="dj-succeeded"') == 2  # two minutes had successes
    assert not re.search(r'(src|href)="(https?:)?//', content)  # nothing from another site (no CDN)


def test_dashboard_lists_workers_with_what_they_run_and_marks_lost_ones(admin_client):
    Worker.objects.create(name="host-a:1:aaa", host="host-a", pid=1)
    Worker.objects.create(name="host-b:2:bbb", host="host-b", pid=2, lost=True)
    running = JobFactory(running=True, worker="host-a:1:aaa", name="tests.block")

    summaries = admin_client.get(reverse(DASHBOARD)).context["workers"]

    assert [(s.worker.name, s.running, stale) for s, stale, _ in summaries] == [
        ("host-a:1:aaa", [(running.pk, "tests.block")], False),
        ("host-b:2:bbb", [], False),
    ]


def test_dashboard_needs_the_view_permission_on_jobs(client):
    assert client.get(reverse(DASHBOARD)).status_code == 302  # to the login page
    assert staff(client).get(reverse(DASHBOARD)).status_code == 403
    assert staff(Client(), "view_job").get(reverse(DASHBOARD)).status_code == 200


def test_app_index_and_job_list_link_to_the_dashboard(admin_client):
    url = reverse(DASHBOARD)
    assert f'href="{url}"' in admin_client.get(reverse("admin:app_list", args=["doctorjob"])).content.decode()
    assert f'href="{url}"' in admin_client.get(reverse("admin:doctorjob_job_changelist")).content.decode()


def test_user_supplied_names_are_escaped_on_the_dashboard(admin_client):
    JobFactory(queue=XSS, name=XSS, running=True, worker=XSS)
    Worker.objects.create(name=XSS, host="h", pid=1, queues=XSS)
    QueueState.objects.create(name=XSS + "q", paused=True)

    content = admin_client.get(reverse(DASHBOARD)).content.decode()

    assert XSS not in content and ESCAPED_XSS in content


def test_resume_buttons_resume_a_paused_queue_and_job_with_post_and_permission():
    QueueState.objects.create(name="emails", paused=True)
    JobDefinition.objects.create(name="tests.noop", paused=True)
    url = reverse("admin:doctorjob_dashboard_resume")
    viewer = staff(Client(enforce_csrf_checks=True), "view_job")

    assert viewer.get(url).status_code == 405
    assert viewer.post(url, {"kind": "queue", "name": "emails"}).status_code == 403  # no CSRF token
    page = viewer.get(reverse(DASHBOARD))
    assert 'aria-label="Resume queue emails"' not in page.content.decode()  # no change permission: no button
    token = page.cookies["csrftoken"].value
    assert viewer.post(url, {"kind": "queue", "name": "emails", "csrfmiddlewaretoken": token}).status_code == 403
    assert QueueState.objects.get(name="emails").paused

    operator = staff(Client(), "view_job", "change_queuestate", "change_jobdefinition")
    response = operator.post(url, {"kind": "queue", "name": "emails"})
    assert response.status_code == 302
    assert messages_of(response) == ["Resumed queue emails: workers claim from it again."]
    response = operator.post(url, {"kind": "definition", "name": "tests.noop"})
    assert messages_of(response)[-1:] == ["Resumed job tests.noop: workers claim from it again."]
    assert not QueueState.objects.get(name="emails").paused and not JobDefinition.objects.get().paused

    response = operator.post(url, {"kind": "queue", "name": "nope"})
    assert messages_of(response)[-1:] == ["There is no queue named 'nope'; nothing was resumed."]
    assert not QueueState.objects.filter(name="nope").exists()
    assert operator.post(url, {"kind": "table", "name": "x"}).status_code == 400


# A job's page


def test_job_page_has_retry_for_dead_and_cancel_for_queued_jobs_and_they_work(admin_client):
    dead, queued, done = JobFactory(dead=True), JobFactory(), JobFactory(succeeded=True)

    def page(job: Job) -> str:
        return admin_client.get(reverse("admin:doctorjob_job_change", args=[job.pk])).content.decode()

    assert 'value="Retry"' in page(dead) and 'value="Cancel job"' not in page(dead)
    assert 'value="Cancel job"' in page(queued) and 'value="Retry"' not in page(queued)
    assert "Retry" not in page(done) and "Cancel job" not in page(done)

    assert admin_client.get(reverse("admin:doctorjob_job_retry", args=[dead.pk])).status_code == 405
    response = admin_client.post(reverse("admin:doctorjob_job_retry", args=[dead.pk]))
    assert messages_of(response) == [f"Queued job #{dead.pk} to run now."]
    response = admin_client.post(reverse("admin:doctorjob_job_cancel", args=[queued.pk]))
    assert messages_of(response)[-1:] == [f"Cancelled job #{queued.pk}."]
    response = admin_client.post(reverse("admin:doctorjob_job_cancel", args=[done.pk]))
    left = f"Job #{done.pk} was left as it was; skipped 1 job that were not queued or waiting."
    assert messages_of(response)[-1:] == [left]
    assert [Job.objects.get(pk=j.pk).status for j in (dead, queued, done)] == ["queued", "cancelled", "succeeded"]


def test_job_buttons_need_the_change_permission():
    dead = JobFactory(dead=True)
    viewer = staff(Client(), "view_job")
    assert 'value="Retry"' not in viewer.get(reverse("admin:doctorjob_job_change", args=[dead.pk])).content.decode()
    assert viewer.post(reverse("admin:doctorjob_job_retry", args=[dead.pk])).status_code == 403
    assert Job.objects.get(pk=dead.pk).status == Status.DEAD


def test_job_page_links_its_definition_worker_dead_letter_and_the_one_it_was_requeued_from(admin_client):
    JobDefinition.objects.create(name="tests.noop")
    worker = Worker.objects.create(name="host:1:abc", host="host", pid=1)
    letter = DeadLetterFactory()
    requeued = operations.requeue(letter)
    dead = letter.job
    dead.worker = worker.name
    dead.save()

    dead_page = admin_client.get(reverse("admin:doctorjob_job_change", args=[dead.pk])).content.decode()
    new_page = admin_client.get(reverse("admin:doctorjob_job_change", args=[requeued.pk])).content.decode()

    assert reverse("admin:doctorjob_deadletter_change", args=[letter.pk]) in dead_page
    assert reverse("admin:doctorjob_worker_change", args=[worker.pk]) in dead_page
    assert reverse("admin:doctorjob_jobdefinition_change", args=[JobDefinition.objects.get().pk]) in dead_page
    assert "requeued from dead letter" in new_page
    assert reverse("admin:doctorjob_deadletter_change", args=[letter.pk]) in new_page


def test_times_show_seconds_and_durations_milliseconds(admin_client):
    job = JobFactory(succeeded=True)
    finished = timezone.now().replace(microsecond=0)
    JobExecution.objects.create(
        job=job, attempt=1, outcome="succeeded", finished_at=finished, duration=timedelta(milliseconds=1234)
    )
    content = admin_client.get(reverse("admin:doctorjob_job_change", args=[job.pk])).content.decode()
    assert finished.strftime("%Y-%m-%d %H:%M:%S") in content
    assert "1,234 ms" in content


def test_definition_page_shows_its_last_run_success_rate_and_a_link_to_its_jobs(admin_client):
    definition = JobDefinition.objects.create(name="tests.noop")
    for outcome in ("succeeded", "succeeded", "succeeded", "failed"):
        execution(JobFactory(succeeded=True, started_at=timezone.now()), outcome, 1)

    content = admin_client.get(reverse("admin:doctorjob_jobdefinition_change", args=[definition.pk])).content.decode()

    assert "75.0% of 4" in content
    assert reverse("admin:doctorjob_job_changelist") + "?name=tests.noop" in content


# Lists


def test_job_search_finds_names_and_error_text(admin_client):
    JobDefinition.objects.create(name="reports.nightly")
    nightly = JobFactory(name="reports.nightly")
    failed = JobFactory(dead=True, error="ConnectionError: smtp-3.example.com unreachable")
    JobFactory()

    def found(term: str) -> list[Job]:
        return list(admin_client.get(reverse("admin:doctorjob_job_changelist"), {"q": term}).context["cl"].result_list)

    assert found("nightly") == [nightly]
    assert found("SMTP-3") == [failed]


def test_filter_choices_come_from_the_definitions_not_from_the_jobs(admin_client):
    JobDefinition.objects.create(name="reports.nightly", queue="reports")
    QueueState.objects.create(name="emails")
    JobFactory.create_batch(3, name="tests.noop")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:doctorjob_job_changelist"))

    filters = {spec.title: [c[0] for c in spec.lookup_choices] for spec in response.context["cl"].filter_specs[1:]}
    assert filters == {"queue": ["emails", "reports"], "name": ["reports.nightly"]}
    assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]


@pytest.mark.postgresql
def test_a_list_the_planner_expects_to_be_long_shows_its_estimate(admin_client, monkeypatch):
    enqueue_many([("tests.noop", {})] * 300)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE doctorjob_job")
    monkeypatch.setattr(changelists, "ESTIMATE_ABOVE", 100)

    response = admin_client.get(reverse("admin:doctorjob_job_changelist"))

    assert response.context["cl"].paginator.estimated
    assert "about 300 jobs (estimate)" in response.content.decode()
    monkeypatch.setattr(changelists, "ESTIMATE_ABOVE", 10_000)
    assert "300 jobs" in admin_client.get(reverse("admin:doctorjob_job_changelist")).content.decode()


@pytest.mark.postgresql
def test_a_count_past_its_time_budget_shows_an_estimate_and_still_one_page_of_rows(admin_client, monkeypatch):
    enqueue_many([("tests.noop", {})] * 120)

    def too_slow(queryset, budget_ms):
        from django.db import OperationalError

        raise OperationalError("canceling statement due to statement timeout")

    monkeypatch.setattr(changelists, "_count_within", too_slow)
    response = admin_client.get(reverse("admin:doctorjob_job_changelist"))

    assert response.context["cl"].paginator.estimated
    assert len(response.context["cl"].result_list) == 50  # a page, not every match
    assert "(estimate)" in response.content.decode()


@pytest.mark.postgresql
def test_status_counts_of_a_big_table_come_from_the_planner_marked_as_estimates(monkeypatch):
    enqueue_many([("tests.noop", {})] * 200)
    JobFactory.create_batch(100, succeeded=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE doctorjob_job")
    monkeypatch.setattr(stats, "EXACT_BELOW", 10)

    counts = stats.status_counts()

    assert counts["queued"] == stats.Counted(200)  # counted through the claim's index
    assert counts["succeeded"] == stats.Counted(100, estimate=True)


# Actions on everything a filter matches


def select_across(client: Client, model: str, action: str, query: str = "") -> object:
    return client.post(
        reverse(f"admin:doctorjob_{model}_changelist") + query,
        {"action": action, "index": 0, "select_across": 1, "_selected_action": ["0"]},
    )


def test_cancel_all_matching_a_filter_in_chunks_with_a_bounded_number_of_queries(admin_client, monkeypatch):
    monkeypatch.setattr(operations, "CHUNK", 50)
    enqueue_many([("tests.noop", {})] * 230, using="default")
    JobFactory.create_batch(5, succeeded=True)

    with CaptureQueriesContext(connection) as queries:
        response = select_across(admin_client, "job", "cancel")

    assert messages_of(response) == ["Cancelled 230 jobs; skipped 5 jobs that were not queued or waiting."]
    assert Job.objects.filter(status=Status.CANCELLED).count() == 230
    # 5 chunks of 4 statements (savepoint, lock, update, release), and the page's own
    assert len(queries.captured_queries) < 50


def test_purge_deletes_matching_jobs_with_their_history_but_not_running_ones(admin_client):
    dead = JobFactory(dead=True)
    execution(dead, "failed", 1)
    letter = DeadLetterFactory(job=dead)
    running = JobFactory(running=True)

    response = select_across(admin_client, "job", "purge")

    assert messages_of(response) == ["Purged 1 job; skipped 1 job that were running."]
    assert list(Job.objects.all()) == [running]
    assert not JobExecution.objects.exists()
    letter.refresh_from_db()
    assert letter.job_id is None  # the dead letter is kept
    assert "delete_selected" not in admin_client.get(reverse("admin:doctorjob_job_changelist")).context["action_form"]


def test_retry_all_dead_jobs_of_a_filter(admin_client):
    JobFactory.create_batch(4, dead=True, queue="emails")
    JobFactory(dead=True, queue="default")

    response = select_across(admin_client, "job", "retry", "?queue=emails")

    assert messages_of(response) == ["Queued 4 jobs to run now."]
    assert sorted(Job.objects.values_list("queue", "status")) == [("default", "dead")] + [("emails", "queued")] * 4


def test_requeue_all_dead_letters_matching_a_filter_says_what_it_skipped_and_why(admin_client):
    DeadLetterFactory.create_batch(3, name="tests.noop")
    DeadLetterFactory(name="tests.noop", requeued=True)
    DeadLetterFactory(name="gone.job")
    DeadLetterFactory(name="tests.typed", payload={"client_id": "not a number"})

    response = select_across(admin_client, "deadletter", "requeue")

    assert messages_of(response) == [
        "Requeued 3 dead letters as new jobs; skipped 3 dead letters: 1 already requeued, "
        "1 whose job is no longer registered, 1 whose payload no longer passes the job's schema."
    ]
    assert DeadLetter.objects.filter(requeued_at__isnull=True).count() == 2
    assert Job.objects.filter(status=Status.QUEUED, name="tests.noop").count() == 3 + 1  # and the earlier requeue's


@pytest.mark.postgresql
def test_requeue_of_100000_dead_letters_takes_seconds_and_a_bounded_number_of_queries(admin_client):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO doctorjob_deadletter (name, queue, payload, priority, attempts, max_attempts, error,"
            " traceback, created_at) SELECT 'tests.noop', 'default', '{}', 0, 3, 3, 'boom', '', now()"
            " FROM generate_series(1, 100000)"
        )

    with CaptureQueriesContext(connection) as queries:
        started = timezone.now()
        response = select_across(admin_client, "deadletter", "requeue")
        took = timezone.now() - started

    assert messages_of(response) == ["Requeued 100,000 dead letters as new jobs."]
    assert Job.objects.count() == 100_000
    assert len(queries.captured_queries) < 400  # 50 chunks of 2,000: a handful of statements each
    assert took < timedelta(seconds=60), took
    print(f"requeued 100,000 dead letters in {took.total_seconds():.1f}s, {len(queries.captured_queries)} queries")
