"""The admin through real requests: requeue dead letters (action and button), retry and cancel
jobs, permissions, CSRF, validation of a corrected payload, escaping of user data."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from doctorjob.models import DeadLetter, Job, Status

from .factories import DeadLetterFactory, JobFactory

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
def login(client):
    """Log ``client`` in as a staff user holding exactly the given doctorjob permissions."""

    def login(*codenames: str, as_client: Client | None = None) -> Client:
        user = User.objects.create_user(username="-".join(codenames) or "staff", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="doctorjob", codename__in=codenames)
        )
        (as_client or client).force_login(user)
        return as_client or client

    return login


def change_url(letter: DeadLetter) -> str:
    return reverse("admin:doctorjob_deadletter_change", args=[letter.pk])


def requeue_url(letter: DeadLetter) -> str:
    return reverse("admin:doctorjob_deadletter_requeue", args=[letter.pk])


def run_action(client: Client, model: str, action: str, objs) -> object:
    return client.post(
        reverse(f"admin:doctorjob_{model}_changelist"),
        {"action": action, "index": 0, "_selected_action": [o.pk for o in objs]},
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# Requeue: the button on the detail page


def test_requeue_button_creates_fresh_queued_job_and_marks_dead_letter(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(name="tests.typed", payload={"client_id": 7}, queue="emails", priority=5)

    response = client.post(requeue_url(letter), {"payload": '{"client_id": 7}'})

    assert response.status_code == 302 and response.url == change_url(letter)
    letter.refresh_from_db()
    job = letter.requeued_job
    assert letter.requeued_at is not None
    assert (job.name, job.queue, job.priority, job.status, job.attempts, job.payload) == (
        "tests.typed",
        "emails",
        5,
        Status.QUEUED,
        0,
        {"client_id": 7},
    )
    job_url = reverse("admin:doctorjob_job_change", args=[job.pk])
    assert messages_of(response) == [f'Requeued dead letter #{letter.pk} as <a href="{job_url}">job #{job.pk}</a>.']
    assert LogEntry.objects.get().get_change_message() == f"Requeued as job #{job.pk}."


def test_corrected_payload_requeues_with_the_new_payload(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(name="tests.typed", payload={"client_id": "7"})
    page = client.get(change_url(letter))
    assert page.context["requeue_form"]["payload"].value() == '{\n  "client_id": "7"\n}'

    client.post(requeue_url(letter), {"payload": '{"client_id": 7}'})

    letter.refresh_from_db()
    assert letter.requeued_job.payload == {"client_id": 7}


def test_invalid_json_shows_an_error_and_writes_nothing(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(name="tests.typed", payload={"client_id": "7"})

    response = client.post(requeue_url(letter), {"payload": '{"client_id": 7'})

    assert response.status_code == 200
    [error] = response.context["requeue_form"].errors["payload"]
    assert error.startswith("Enter valid JSON: Expecting ',' delimiter")
    assert 'value="Requeue"' in response.content.decode()  # the user can correct it and try again
    assert_nothing_requeued(letter, payload={"client_id": "7"})


def test_schema_violation_shows_an_error_naming_the_problem_and_writes_nothing(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(name="tests.typed", payload={"client_id": "7"})

    response = client.post(requeue_url(letter), {"payload": '{"client_id": "seven"}'})

    assert response.status_code == 200
    assert response.context["requeue_form"].errors["payload"] == [
        "payload['client_id'] does not match the schema of job 'tests.typed': 'seven' is not of type 'integer'"
    ]
    assert_nothing_requeued(letter, payload={"client_id": "7"})


def test_dead_letter_of_a_job_no_longer_registered_is_not_requeued(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(name="tests.renamed_long_ago")

    response = client.post(requeue_url(letter), {"payload": "{}"})

    [error] = response.context["requeue_form"].non_field_errors()
    assert error.startswith("unknown job 'tests.renamed_long_ago'; jobs are declared with @job in a jobs.py")
    assert_nothing_requeued(letter, payload={})


def test_already_requeued_dead_letter_cannot_be_requeued_again(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory(requeued=True)
    first_job = letter.requeued_job

    page = client.get(change_url(letter))
    response = client.post(requeue_url(letter), {"payload": "{}"})

    assert "requeue_form" not in page.context
    assert f"already requeued (as job #{first_job.pk})" in page.content.decode()
    assert response.status_code == 302
    assert messages_of(response) == [
        f"Dead letter #{letter.pk} was already requeued (as job #{first_job.pk}); it cannot be requeued again."
    ]
    letter.refresh_from_db()
    assert letter.requeued_job == first_job
    assert Job.objects.filter(status=Status.QUEUED).count() == 1


def test_get_on_requeue_url_changes_nothing(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory()

    response = client.get(requeue_url(letter))

    assert response.status_code == 405
    assert_nothing_requeued(letter, payload={})


def test_requeue_post_without_csrf_token_is_refused_and_with_the_pages_token_accepted(login):
    client = login("view_deadletter", "requeue_deadletter", as_client=Client(enforce_csrf_checks=True))
    letter = DeadLetterFactory()

    refused = client.post(requeue_url(letter), {"payload": "{}"})
    assert refused.status_code == 403
    assert_nothing_requeued(letter, payload={})

    page = client.get(change_url(letter)).content.decode()
    form = re.search(r'<form method="post" action="([^"]+)" id="requeue_form".*?</form>', page, re.S)
    assert form[1] == requeue_url(letter)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form[0])[1]
    accepted = client.post(form[1], {"payload": "{}", "csrfmiddlewaretoken": token})

    assert accepted.status_code == 302
    letter.refresh_from_db()
    assert letter.requeued_job.status == Status.QUEUED


# Requeue: the list action


def test_requeue_action_requeues_selected_dead_letters_and_skips_requeued_ones(login):
    client = login("view_deadletter", "requeue_deadletter")
    fresh = DeadLetterFactory.create_batch(2, payload={"n": 1})
    done = DeadLetterFactory(requeued=True)
    unselected = DeadLetterFactory()

    response = run_action(client, "deadletter", "requeue", [*fresh, done])

    assert response.status_code == 302
    assert messages_of(response) == ["Requeued 2 dead letters as new jobs; skipped 1 dead letter already requeued."]
    for letter in fresh:
        letter.refresh_from_db()
        assert letter.requeued_job.payload == {"n": 1}
        assert (letter.requeued_job.status, letter.requeued_job.attempts) == (Status.QUEUED, 0)
    unselected.refresh_from_db()
    assert unselected.requeued_at is None


# Requeue: permissions


def test_requeue_needs_requeue_permission_not_change(login):
    client = login("view_deadletter", "change_deadletter")
    letter = DeadLetterFactory()

    page = client.get(change_url(letter))
    by_button = client.post(requeue_url(letter), {"payload": "{}"})
    by_action = run_action(client, "deadletter", "requeue", [letter])

    assert page.status_code == 200 and "requeue_form" not in page.context
    assert by_button.status_code == 403
    assert by_action.status_code == 200 and not by_action.context["action_form"]
    assert_nothing_requeued(letter, payload={})


def test_requeue_permission_without_view_permission_is_refused(login):
    client = login("requeue_deadletter")
    letter = DeadLetterFactory()

    assert client.post(requeue_url(letter), {"payload": "{}"}).status_code == 403
    assert_nothing_requeued(letter, payload={})


def test_view_only_user_sees_no_requeue_button_or_action(login):
    client = login("view_deadletter")
    letter = DeadLetterFactory()

    detail = client.get(change_url(letter))
    changelist = client.get(reverse("admin:doctorjob_deadletter_changelist"))

    assert detail.status_code == 200 and 'value="Requeue"' not in detail.content.decode()
    assert 'value="requeue"' not in changelist.content.decode()
    assert client.post(requeue_url(letter), {"payload": "{}"}).status_code == 403
    assert_nothing_requeued(letter, payload={})


def test_requeue_user_sees_button_and_action(login):
    client = login("view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory()

    assert 'value="Requeue"' in client.get(change_url(letter)).content.decode()
    changelist = client.get(reverse("admin:doctorjob_deadletter_changelist")).content.decode()
    assert '<option value="requeue">Requeue selected dead letters</option>' in changelist


def test_anonymous_requeue_is_sent_to_login(client):
    letter = DeadLetterFactory()

    response = client.post(requeue_url(letter), {"payload": "{}"})

    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert_nothing_requeued(letter, payload={})


def test_dead_letters_cannot_be_added_or_edited_by_form(admin_client):
    letter = DeadLetterFactory(payload={"n": 1})

    assert admin_client.get(reverse("admin:doctorjob_deadletter_add")).status_code == 403
    assert admin_client.post(change_url(letter), {"name": "x", "payload": "{}"}).status_code == 403
    letter.refresh_from_db()
    assert (letter.name, letter.payload) == ("tests.noop", {"n": 1})


# Jobs: actions, search, filters


def test_retry_action_queues_only_dead_and_cancelled_jobs(login):
    client = login("view_job", "change_job")
    dead, cancelled = JobFactory(dead=True), JobFactory(cancelled=True)
    others = [JobFactory(), JobFactory(running=True), JobFactory(succeeded=True)]

    response = run_action(client, "job", "retry", [dead, cancelled, *others])

    assert messages_of(response) == ["Queued 2 jobs to run now; skipped 3 jobs that were not dead or cancelled."]
    for job in (dead, cancelled):
        job.refresh_from_db()
        assert (job.status, job.attempts, job.finished_at) == (Status.QUEUED, 0, None)
    assert [Job.objects.get(pk=j.pk).status for j in others] == [Status.QUEUED, Status.RUNNING, Status.SUCCEEDED]


def test_cancel_action_cancels_only_queued_jobs(login):
    client = login("view_job", "change_job")
    queued = JobFactory()
    others = [JobFactory(running=True), JobFactory(dead=True), JobFactory(succeeded=True)]

    response = run_action(client, "job", "cancel", [queued, *others])

    assert messages_of(response) == ["Cancelled 1 job; skipped 3 jobs that were not queued or waiting."]
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED and queued.finished_at is not None
    assert [Job.objects.get(pk=j.pk).status for j in others] == [Status.RUNNING, Status.DEAD, Status.SUCCEEDED]


def test_job_actions_need_change_permission(login):
    client = login("view_job")
    dead, queued = JobFactory(dead=True), JobFactory()

    for action, job in (("retry", dead), ("cancel", queued)):
        response = run_action(client, "job", action, [job])
        assert response.status_code == 200 and not response.context["action_form"]  # no action offered
    assert [Job.objects.get(pk=j.pk).status for j in (dead, queued)] == [Status.DEAD, Status.QUEUED]


def test_jobs_cannot_be_added_or_edited_by_form(admin_client):
    job = JobFactory(dead=True)
    url = reverse("admin:doctorjob_job_change", args=[job.pk])

    assert admin_client.get(reverse("admin:doctorjob_job_add")).status_code == 403
    assert 'name="_save"' not in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"status": "queued"}).status_code == 403
    job.refresh_from_db()
    assert job.status == Status.DEAD


def listed(client: Client, **query) -> list[Job]:
    response = client.get(reverse("admin:doctorjob_job_changelist"), query)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_job_search_finds_by_key_and_by_id(admin_client):
    signup = JobFactory(key="login-link:alice")
    other = JobFactory(key="login-link:bob")
    JobFactory(key=None)

    assert listed(admin_client, q="login-link:alice") == [signup]
    assert listed(admin_client, q="login-link") == [other, signup]
    assert listed(admin_client, q=str(other.pk)) == [other]
    assert listed(admin_client, q="no-such-key") == []


def test_job_filter_by_status_queue_and_name(admin_client):
    dead = JobFactory(dead=True, queue="emails", name="tests.fail")
    JobFactory(queue="emails")
    JobFactory(dead=True)

    assert listed(admin_client, status__exact="dead", queue="emails") == [dead]
    assert listed(admin_client, name="tests.fail") == [dead]


# Escaping of user data


def test_script_in_payload_and_error_is_escaped_in_lists_and_detail_pages(admin_client):
    job = JobFactory(dead=True, name=XSS, payload={"note": XSS}, error=XSS, traceback=XSS)
    letter = DeadLetterFactory(
        job=job, name=XSS, payload={"note": XSS}, error=f"{XSS}\nsecond line", traceback=f"</pre>{XSS}"
    )
    pages = [
        reverse("admin:doctorjob_job_changelist"),
        reverse("admin:doctorjob_job_change", args=[job.pk]),
        reverse("admin:doctorjob_deadletter_changelist"),
        change_url(letter),
    ]

    for url in pages:
        content = admin_client.get(url).content.decode()
        assert XSS not in content, url
        assert ESCAPED_XSS in content, url
    detail = admin_client.get(change_url(letter)).content.decode()
    assert '<pre class="dj-pre">{\n  &quot;note&quot;: &quot;' + ESCAPED_XSS + "&quot;\n}</pre>" in detail
    assert f'<pre class="dj-pre">&lt;/pre&gt;{ESCAPED_XSS}</pre>' in detail


def assert_nothing_requeued(letter: DeadLetter, *, payload) -> None:
    letter.refresh_from_db()
    assert (letter.requeued_at, letter.requeued_job, letter.payload) == (None, None, payload)
    assert not Job.objects.filter(status=Status.QUEUED).exists()


def test_retrying_a_dead_job_marks_its_dead_letter_requeued_so_it_cannot_run_twice(login):
    client = login("view_job", "change_job", "view_deadletter", "requeue_deadletter")
    letter = DeadLetterFactory()

    run_action(client, "job", "retry", [letter.job])
    run_action(client, "deadletter", "requeue", [letter])

    letter.refresh_from_db()
    assert letter.requeued_job_id == letter.job_id
    assert Job.objects.filter(status=Status.QUEUED).count() == 1


def test_a_jobs_page_shows_its_tree_result_and_progress(admin_client):
    from doctorjob import Child, enqueue

    parent = enqueue("trees.combine", children=[Child("trees.leaf", {"value": i}) for i in range(3)])
    child = Job.objects.filter(parent=parent).order_by("id").first()
    Job.objects.filter(pk=child.pk).update(result={"rows": 3}, progress={"done": XSS})
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[parent.pk])).content.decode()
    for each in Job.objects.filter(parent=parent):
        assert reverse("admin:doctorjob_job_change", args=[each.pk]) in page
    assert 'dj-badge dj-queued">queued</span></li>' in page and "dj-waiting" in page
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[child.pk])).content.decode()
    assert f'href="{reverse("admin:doctorjob_job_change", args=[parent.pk])}"' in page
    assert "&quot;rows&quot;: 3" in page and ESCAPED_XSS in page and XSS not in page


def test_a_parent_of_many_links_to_all_its_children(admin_client, monkeypatch):
    from doctorjob import Child, enqueue
    from doctorjob.admin import JobAdmin

    monkeypatch.setattr(JobAdmin, "CHILDREN_SHOWN", 2)
    parent = enqueue("trees.combine", children=[Child("trees.leaf", {"value": i}) for i in range(3)])
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[parent.pk])).content.decode()
    assert page.count('dj-queued">queued</span></li>') == 2
    listing = admin_client.get(reverse("admin:doctorjob_job_changelist") + f"?parent__id__exact={parent.pk}")
    assert listing.status_code == 200 and f"?parent__id__exact={parent.pk}" in page
    assert listing.context["cl"].result_count == 3


def test_a_job_outside_a_tree_has_no_tree_fields(admin_client):
    from doctorjob import enqueue

    job = enqueue("trees.leaf", {"value": 1})
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[job.pk])).content.decode()
    assert "Job tree" not in page and "Pending children" not in page


def test_deleting_a_child_from_its_page_settles_its_waiting_parent(admin_client):
    from doctorjob import Child, enqueue

    parent = enqueue("trees.combine", children=[Child("trees.leaf", {"value": i}) for i in range(2)])
    first, second = Job.objects.filter(parent=parent).order_by("id")
    for child in (first, second):
        url = reverse("admin:doctorjob_job_delete", args=[child.pk])
        assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not Job.objects.filter(parent=parent).exists()
    parent.refresh_from_db()
    assert (parent.status, parent.pending_children) == (Status.QUEUED, 0)  # runs with what is left


def test_a_running_job_cannot_be_deleted_from_its_page(admin_client):
    running = JobFactory(running=True)
    page = admin_client.get(reverse("admin:doctorjob_job_change", args=[running.pk])).content.decode()
    assert reverse("admin:doctorjob_job_delete", args=[running.pk]) not in page
    assert (
        admin_client.post(reverse("admin:doctorjob_job_delete", args=[running.pk]), {"post": "yes"}).status_code == 403
    )
    assert Job.objects.filter(pk=running.pk).exists()
