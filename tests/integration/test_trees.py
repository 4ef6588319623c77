"""Job trees, results and progress, through real workers on the test database (every backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from doctorjob import Child, InvalidEnqueue, UnknownJob, enqueue
from doctorjob.maintenance import prune_succeeded
from doctorjob.models import DeadLetter, Job, Status
from doctorjob.operations import cancel, retry
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)


def leaf(value, **options):
    return Child("trees.leaf", {"value": value}, **options)


def reload(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


# -- writing a tree --------------------------------------------------------------------------


def test_a_tree_is_written_with_the_caller_data_and_its_parent_waits():
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[leaf(1), leaf(2, children=[leaf(3)])])
    children = list(Job.objects.filter(parent=parent).order_by("id"))
    assert reload(parent).status == Status.WAITING and reload(parent).pending_children == 2
    assert [c.status for c in children] == [Status.QUEUED, Status.WAITING]
    assert children[1].pending_children == 1
    grandchild = Job.objects.get(parent=children[1])
    assert (grandchild.status, grandchild.on_failure) == (Status.QUEUED, "fail-parent")
    assert grandchild.payload == {"value": 3}


def test_a_rolled_back_tree_leaves_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("trees.combine", children=[leaf(1), leaf(2)])
        raise RuntimeError("the caller's transaction fails")
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "bad, error",
    [
        (Child("no.such.job"), UnknownJob),
        (Child("trees.leaf", {"value": object()}), Exception),
        (Child("trees.leaf", priority="high"), InvalidEnqueue),
        ("trees.leaf", InvalidEnqueue),
    ],
)
def test_a_bad_node_writes_nothing_of_the_tree_even_in_autocommit(bad, error):
    with pytest.raises(error):
        enqueue("trees.combine", children=[leaf(1), Child("trees.combine", children=[leaf(2), bad])])
    assert not Job.objects.exists()


def test_a_bad_node_leaves_the_callers_transaction_usable():
    with transaction.atomic():
        Effect.objects.create(job_id=1)
        with pytest.raises(UnknownJob):
            enqueue("trees.combine", children=[leaf(1), Child("no.such.job")])
        Effect.objects.create(job_id=2)
    assert Effect.objects.count() == 2 and not Job.objects.exists()


def test_on_failure_must_be_one_of_three():
    with pytest.raises(ValueError, match="'explode'"):
        Child("trees.leaf", on_failure="explode")


def test_a_child_whose_key_is_held_is_not_the_parents_child():
    with transaction.atomic():
        held = enqueue("trees.leaf", {"value": 0}, key="shared")
        parent = enqueue("trees.combine", children=[leaf(1, key="shared")])
    parent.refresh_from_db()
    assert parent.status == Status.QUEUED and not Job.objects.filter(parent=parent).exists()
    assert Job.objects.get(key="shared") == held


def test_a_root_whose_key_is_held_returns_the_holder_and_writes_no_children():
    with transaction.atomic():
        first = enqueue("trees.combine", key="report", children=[leaf(1)])
        again = enqueue("trees.combine", key="report", children=[leaf(2), leaf(3)])
    assert again.pk == first.pk and Job.objects.count() == 2


# -- running a tree --------------------------------------------------------------------------


def test_the_parent_runs_after_its_children_and_reads_their_results(run_worker):
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[leaf(1), leaf({"a": [2]}), leaf(None)])
    ids = [str(pk) for pk in Job.objects.filter(parent=parent).order_by("id").values_list("id", flat=True)]
    run_worker()
    parent.refresh_from_db()
    assert parent.status == Status.SUCCEEDED
    assert parent.result == {"results": dict(zip(ids, [1, {"a": [2]}, None])), "failed": {}}
    children = Job.objects.filter(parent=parent)
    assert max(c.finished_at for c in children) <= parent.started_at


def test_a_child_waiting_for_a_retry_is_not_finished(run_worker):
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[Child("trees.leaf", {"value": 5, "flaky": True})])
    run_worker()
    parent.refresh_from_db()
    child = Job.objects.get(parent=parent)
    assert (child.status, child.attempts) == (Status.SUCCEEDED, 2)
    assert parent.result["results"] == {str(child.pk): 5}


def test_a_dead_child_fails_its_parent_and_grandparent(run_worker):
    with transaction.atomic():
        root = enqueue(
            "trees.combine",
            children=[Child("trees.combine", children=[Child("trees.leaf", {"fail": True, "value": 7})]), leaf(1)],
        )
    run_worker()
    middle = Job.objects.get(parent=root, name="trees.combine")
    culprit = Job.objects.get(parent=middle)
    root.refresh_from_db()
    assert culprit.status == Status.DEAD
    assert (middle.status, middle.started_at) == (Status.DEAD, None)  # never ran
    assert middle.error == f"child {culprit.pk} (trees.leaf) failed"
    assert (root.status, root.error) == (Status.DEAD, f"child {middle.pk} (trees.combine) failed")
    letters = dict(DeadLetter.objects.values_list("job_id", "error"))
    assert letters[middle.pk] == middle.error and letters[root.pk] == root.error


def test_an_ignored_failure_lets_the_parent_run_and_see_it(run_worker):
    with transaction.atomic():
        parent = enqueue(
            "trees.combine",
            children=[leaf(1), Child("trees.leaf", {"fail": True, "value": 2}, on_failure="ignore")],
        )
    run_worker()
    parent.refresh_from_db()
    ok, bad = Job.objects.filter(parent=parent).order_by("id")
    assert parent.status == Status.SUCCEEDED
    assert parent.result == {"results": {str(ok.pk): 1}, "failed": {str(bad.pk): "PermanentError: leaf 2 refused"}}


def test_a_removed_failure_deletes_the_child_and_keeps_its_dead_letter(run_worker):
    with transaction.atomic():
        parent = enqueue(
            "trees.combine",
            children=[leaf(1), Child("trees.leaf", {"fail": True, "value": 2}, on_failure="remove")],
        )
    run_worker()
    parent.refresh_from_db()
    (ok,) = Job.objects.filter(parent=parent)
    assert parent.status == Status.SUCCEEDED
    assert parent.result == {"results": {str(ok.pk): 1}, "failed": {}}
    letter = DeadLetter.objects.get(name="trees.leaf")
    assert letter.job_id is None and letter.payload == {"fail": True, "value": 2}


def test_a_cancelled_child_counts_as_finished():
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[leaf(1), leaf(2)])
    first, second = Job.objects.filter(parent=parent).order_by("id")
    assert cancel([first]) == 1
    assert reload(parent).pending_children == 1
    assert cancel([second]) == 1
    parent.refresh_from_db()
    assert (parent.status, parent.pending_children) == (Status.QUEUED, 0)


def test_a_retried_child_makes_its_waiting_parent_wait_again(run_worker):
    with transaction.atomic():
        parent = enqueue(
            "trees.combine",
            children=[Child("trees.leaf", {"fail": True}, on_failure="ignore"), leaf(1, delay=3600)],
        )
    run_worker()
    dead = Job.objects.get(parent=parent, status=Status.DEAD)
    assert reload(parent).pending_children == 1
    assert retry([dead]) == 1
    assert reload(parent).pending_children == 2


def test_retention_keeps_a_result_its_parent_has_yet_to_read(run_worker):
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[leaf(1), leaf(2, delay=3600)])
    run_worker()
    done = Job.objects.get(parent=parent, status=Status.SUCCEEDED)
    Job.objects.filter(pk=done.pk).update(finished_at=done.finished_at.replace(year=2000))
    prune_succeeded("default", keep=timedelta(days=1))
    assert Job.objects.filter(pk=done.pk).exists()


def test_retention_prunes_a_child_once_its_parent_has_run_or_is_gone(run_worker):
    with transaction.atomic():
        ran = enqueue("trees.combine", children=[leaf(1)])
        orphaned = enqueue("trees.combine", children=[leaf(2)])
    run_worker()
    assert set(Job.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    Job.objects.filter(pk=orphaned.pk).delete()  # its parent pruned already, or deleted by someone
    Job.objects.exclude(parent=None).update(finished_at=datetime(2000, 1, 1, tzinfo=UTC))
    assert prune_succeeded("default", keep=timedelta(days=1)) == (2, False)
    assert list(Job.objects.all()) == [ran]


# -- results, progress, ctx.enqueue ----------------------------------------------------------


def test_progress_survives_a_failed_atomic_attempt_and_is_recovered(run_worker):
    with transaction.atomic():
        job = enqueue("trees.resumes", {"to": 5, "fail_at": 3})
    run_worker()
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert job.result == {"started_from": 3, "attempt": 2}  # the first attempt's progress, recovered
    assert job.progress == {"done": 5}
    assert not Effect.objects.exists()  # the failed attempt's write rolled back, its progress did not


def test_progress_must_be_json():
    from doctorjob.context import JobContext
    from doctorjob.exceptions import InvalidPayload

    ctx = JobContext(1, "trees.leaf", "default", 1, 1)
    with pytest.raises(InvalidPayload, match=r"progress\['x'\] of job 'trees.leaf'"):
        ctx.save_progress({"x": {1, 2}})


def test_ctx_enqueue_commits_with_the_atomic_job(run_worker):
    with transaction.atomic():
        kept = enqueue("trees.spawns", {})
        dropped = enqueue("trees.spawns", {"fail": True})
    run_worker()
    kept.refresh_from_db()
    follow_ups = Job.objects.filter(name="trees.leaf")
    assert [j.pk for j in follow_ups] == [kept.result]  # the failed attempt's enqueue rolled back
    assert follow_ups[0].parent_id is None
    assert reload(dropped).status == Status.DEAD


def test_the_claim_never_takes_a_waiting_parent(run_worker):
    with transaction.atomic():
        parent = enqueue("trees.combine", children=[leaf(1, delay=3600)])
    worker = run_worker()
    assert worker.processed == 0 and reload(parent).status == Status.WAITING
