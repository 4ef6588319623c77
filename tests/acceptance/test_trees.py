"""Job trees under competing worker processes: children finishing at the same moment on several
workers settle their parent exactly once, and a failure travels up a tree once."""

from __future__ import annotations

import pytest
from django.db import transaction

from doctorjob import Child, enqueue
from doctorjob.models import DeadLetter, Job, Status
from tests.testapp.models import Effect

from .helpers import statuses, wait_for

CHILDREN = 600
WORKERS = 3


@pytest.mark.django_db(transaction=True)
def test_hundreds_of_children_finishing_on_several_workers_run_their_parent_once(workers):
    pool = [workers("--concurrency", "4", "--batch-size", "20", "--poll-interval", "0.1") for _ in range(WORKERS)]
    with transaction.atomic():
        parent = enqueue("trees.total", children=[Child("trees.add", {"value": i}) for i in range(CHILDREN)])
        # A second tree whose failure must travel up two levels exactly once, meanwhile.
        doomed = enqueue(
            "trees.total",
            children=[
                Child("trees.total", children=[Child("trees.add", {"value": i}) for i in range(50)]),
                Child("trees.total", children=[Child("trees.leaf", {"fail": True})]),
            ],
        )

    wait_for(
        lambda: (
            Job.objects.filter(pk__in=[parent.pk, doomed.pk]).exclude(status=Status.WAITING).count() == 2
            and not Job.objects.filter(status__in=[Status.QUEUED, Status.RUNNING]).exists()
        ),
        timeout=90,
        message=lambda: f"both trees to finish: {statuses()}\n{pool[0].output()[-3000:]}",
    )
    assert [worker.stop() for worker in pool] == [0] * WORKERS

    parent.refresh_from_db()
    assert parent.status == Status.SUCCEEDED
    assert parent.result == {"sum": sum(range(CHILDREN)), "count": CHILDREN}
    assert Effect.objects.filter(job_id=parent.pk).count() == 1
    ran = set(Job.objects.filter(parent=parent).values_list("worker", flat=True))
    assert len(ran) > 1, "one worker ran every child: the test did not exercise competing workers"

    doomed.refresh_from_db()
    failing = Job.objects.get(parent__parent=doomed, name="trees.leaf")
    middle = Job.objects.get(pk=failing.parent_id)
    assert (middle.status, doomed.status) == (Status.DEAD, Status.DEAD)
    assert doomed.error == f"child {middle.pk} (trees.total) failed"
    assert DeadLetter.objects.filter(job_id=doomed.pk).count() == 1
    assert not Effect.objects.filter(job_id__in=[doomed.pk, middle.pk]).exists()
