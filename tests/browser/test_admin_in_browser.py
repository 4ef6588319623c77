"""The admin as a person uses it, in a real headless chromium: the dashboard draws its chart
and resumes a paused queue; a dead letter's payload is corrected in the requeue panel, requeued,
run by a real worker and seen succeeded; every page fits at 1024, 1400 and 1920 px, with no
sideways scroll and nothing clipped. With DOCTORJOB_SCREENSHOTS=DIR (``make screenshots``) the
pages are also saved there as PNGs."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from doctorjob import Child, enqueue
from doctorjob.models import DeadLetter, Job, JobExecution, QueueState, Status, Worker
from tests.acceptance.helpers import run_jobs
from tests.integration.factories import DeadLetterFactory, JobFactory

from .conftest import WIDTHS, sideways_overflow

LONG_LINE = "x" * 400
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/very/long/path/to/the/module/that/sends/the/emails/for/the/customers.py", line 120, in send\n'
    f"    smtp.sendmail(sender, recipients, message)  # {LONG_LINE}\n"
    f"ConnectionError: smtp.example.com refused the connection: {LONG_LINE}"
)


def populate() -> dict[str, Any]:
    """A small but complete system: succeeded attempts from a real worker, failed attempts, a
    dead job and its dead letter, a paused queue, a live and a lost worker."""
    for n in range(6):
        enqueue("tests.noop", {"n": n})
    done = run_jobs("--burst", "--poll-interval", "0.05")
    assert done.returncode == 0, done.stderr
    now = timezone.now()
    for minutes in (2, 5, 9):
        failed = JobFactory(name="tests.fail", dead=True, error="RuntimeError: boom", traceback=TRACEBACK)
        JobExecution.objects.create(
            job=failed,
            attempt=3,
            outcome="failed",
            worker="web-1:42:abc123",
            started_at=now - timedelta(minutes=minutes, seconds=1),
            finished_at=now - timedelta(minutes=minutes),
            duration=timedelta(milliseconds=870),
            error="RuntimeError: boom",
        )
    letter = DeadLetterFactory(
        name="tests.noop",
        queue="default",
        payload={"n": 1, "recipients": ["ada@example.com"] * 3, "note": LONG_LINE},
        error=f"ConnectionError: smtp.example.com refused the connection: {LONG_LINE}",
        traceback=TRACEBACK,
    )
    QueueState.objects.update_or_create(name="emails", defaults={"paused": True})
    Worker.objects.create(
        name="web-1:42:abc123",
        host="web-1",
        pid=42,
        queues="default,emails",
        concurrency=4,
        lease=3600,  # stays "alive" however long the test takes
        last_claimed_at=now,
    )
    for n in range(3):
        enqueue("tests.noop", {"n": n}, queue="emails", run_at=now - timedelta(minutes=4 - n))
    enqueue("tests.noop", {"n": 9}, queue="reports", delay=3600)
    Worker.objects.create(
        name="web-2:43:def456", host="web-2", pid=43, lost=True, last_heartbeat=now - timedelta(minutes=10)
    )
    return {"letter": letter, "dead_job": letter.job}


def test_dashboard_draws_its_chart_and_resumes_a_paused_queue(open_page):
    populate()
    page = open_page(reverse("admin:doctorjob_dashboard"))

    assert page.locator("#dj-throughput g[data-series=succeeded] rect").count() >= 1
    assert page.locator("#dj-throughput g[data-series=failed] rect").count() == 3
    assert page.locator("#dj-throughput g[data-series=dead] polyline").count() == 1
    assert "succeeded: 6" in page.inner_text(".dj-legend")
    assert page.inner_text("#dj-status-counts [data-status=succeeded] .dj-n") == "6"
    assert "web-2:43:def456" in page.inner_text("#dj-workers") and "lost" in page.inner_text("#dj-workers")

    page.click("input[aria-label='Resume queue emails']")

    assert "Resumed queue emails" in page.inner_text("ul.messagelist")
    assert not QueueState.objects.get(name="emails").paused
    assert "Nothing is paused." in page.inner_text("#dj-paused")


def test_dead_letter_corrected_in_the_panel_is_requeued_run_by_a_worker_and_succeeds(open_page):
    letter = populate()["letter"]
    page = open_page(reverse("admin:doctorjob_deadletter_change", args=[letter.pk]))
    panel = page.locator("#requeue_form")
    panel.scroll_into_view_if_needed()
    box, viewport = panel.bounding_box(), page.viewport_size
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], box
    assert page.locator("#requeue_form textarea").bounding_box()["width"] > 600

    page.fill("#requeue_form textarea", '{"n": 42}')
    page.click("#requeue_form input[type=submit]")

    assert "Requeued dead letter" in page.inner_text("ul.messagelist")
    letter.refresh_from_db()
    job = letter.requeued_job
    assert (job.status, job.payload) == (Status.QUEUED, {"n": 42})
    done = run_jobs("--burst", "--poll-interval", "0.05")
    assert done.returncode == 0, done.stderr
    page.click("ul.messagelist a")  # "Requeued dead letter #N as job #M": the new job's page
    assert page.inner_text(".field-status_badge .readonly") == "succeeded"
    assert '"n": 42' in page.inner_text(".field-result_display")
    assert f"#{letter.pk}" in page.inner_text("#dj-job-links")  # requeued from that dead letter


def test_every_page_fits_at_1024_1400_and_1920_px_without_sideways_scroll(open_page):
    data = populate()
    data["parent"] = enqueue(
        "trees.combine", children=[Child("trees.leaf", {"value": "x" * 200}) for _ in range(3)], using="default"
    )
    shots = os.environ.get("DOCTORJOB_SCREENSHOTS")
    pages = {
        "dashboard": reverse("admin:doctorjob_dashboard"),
        "jobs": reverse("admin:doctorjob_job_changelist"),
        "job": reverse("admin:doctorjob_job_change", args=[data["dead_job"].pk]),
        "dead-letters": reverse("admin:doctorjob_deadletter_changelist"),
        "dead-letter": reverse("admin:doctorjob_deadletter_change", args=[data["letter"].pk]),
        "workers": reverse("admin:doctorjob_worker_changelist"),
        "job-tree": reverse("admin:doctorjob_job_change", args=[data["parent"].pk]),
    }
    problems = []
    for width in WIDTHS:
        for name, path in pages.items():
            page = open_page(path, width=width)
            page.eval_on_selector_all("details.dj-fold", "els => els.forEach(e => e.open = true)")
            where = f"{name} at {width}px"
            problems += [f"{where}: {p}" for p in sideways_overflow(page, "html, body, #content, .results")]
            problems += [f"{where}: {p}" for p in sideways_overflow(page, ".dj-pre, .readonly, #requeue_form")]
            if name == "dead-letter":
                box = page.locator("#requeue_form").bounding_box()
                content = page.locator("#content").bounding_box()
                if box["x"] + box["width"] > width or box["width"] < 0.9 * content["width"]:
                    problems.append(f"{where}: requeue panel {box} is not the content's width {content}")
            if shots and (width == 1400 or name == "dead-letter"):
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=f"{shots}/{name}-{width}.png", full_page=True)
            page.close()
    if shots:
        page = open_page(pages["dashboard"], width=1400, dark=True)
        page.screenshot(path=f"{shots}/dashboard-dark-1400.png", full_page=True)
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def _jobs_are_registered() -> None:
    # The worker subprocess and the admin's links read the definitions it syncs.
    assert Job._meta.db_table and DeadLetter._meta.db_table
