"""Handlers for the job tree, result and progress tests (tests/integration/test_trees.py and
tests/acceptance/test_trees.py)."""

from __future__ import annotations

from doctorjob import PermanentError, job

from .models import Effect


@job("trees.leaf", max_attempts=2, backoff={"base": 0, "jitter": 0})
def leaf(payload, ctx):
    """Return ``value``; dead at once with ``fail``; fail only the first attempt with ``flaky``."""
    if payload.get("fail"):
        raise PermanentError(f"leaf {payload.get('value')} refused")
    if payload.get("flaky") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return payload.get("value")


@job("trees.combine")
def combine(payload, ctx):
    """A parent: what its children left it."""
    return {"results": ctx.children_results(), "failed": ctx.failed_children()}


@job("trees.total", queue="trees")
def total(payload, ctx):
    """A parent of many: the sum of its children's results, and how many there were."""
    results = ctx.children_results()
    Effect.objects.create(job_id=ctx.job_id)  # one row per run: the parent must run once
    return {"sum": sum(results.values()), "count": len(results)}


@job("trees.add", queue="trees")
def add(payload, ctx):
    return payload["value"]


@job("trees.resumes", max_attempts=3, backoff={"base": 0, "jitter": 0}, atomic=True)
def resumes(payload, ctx):
    """Count to ``to``, saving progress at each step; the first attempt writes an Effect row
    and fails at ``fail_at``, so its write rolls back and its progress stays."""
    start = ctx.recover_progress() or {"done": 0}
    seen = [start["done"]]
    for step in range(start["done"], payload["to"]):
        if ctx.attempt == 1 and step == payload["fail_at"]:
            Effect.objects.create(job_id=ctx.job_id)
            raise RuntimeError(f"failed at step {step}")
        ctx.save_progress({"done": step + 1})
    return {"started_from": seen[0], "attempt": ctx.attempt}


@job("trees.spawns", atomic=True, max_attempts=1)
def spawns(payload, ctx):
    """Enqueue a follow-up on the handler's connection, then fail if told to."""
    follow_up = ctx.enqueue("trees.leaf", {"value": "follow-up"})
    if payload.get("fail"):
        raise RuntimeError("failed after enqueueing")
    return follow_up.pk
