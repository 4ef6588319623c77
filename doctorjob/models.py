"""Jobs, dead letters and job definitions, stored in the project's own database."""

from __future__ import annotations

from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.base import ModelState
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    DEAD = "dead", "dead"
    CANCELLED = "cancelled", "cancelled"
    SKIPPED = "skipped", "skipped"
    WAITING = "waiting", "waiting"  # for its children to finish; never claimed
    RELAYED = "relayed", "relayed"  # published to an external broker by a relay (doctorjob.relays)


class OnFailure(models.TextChoices):
    """What a child's failure (it is dead) does to the parent waiting for it."""

    FAIL_PARENT = "fail-parent", "fail the parent"
    IGNORE = "ignore", "ignore: the parent runs and sees it"
    REMOVE = "remove", "remove the child"


class Job(models.Model):
    """One unit of work, written in the caller's transaction and drained by workers.

    ``lease_id`` is the fencing token: each claim sets a new one, and every write a worker
    makes afterwards matches on it, so a worker whose lease was taken over changes nothing.
    """

    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100, default="default")
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    priority = models.IntegerField(default=0, help_text="Larger runs sooner.")
    run_at = models.DateTimeField(default=timezone.now, help_text="Not claimed before this time.")
    # Integers with a validator rather than PositiveIntegerField, whose CHECK constraints
    # PostgreSQL rebuilds from their stored text for every INSERT statement: the three cost
    # enqueue() 7–10 µs of the database's CPU a call, a third of what the job's row costs it
    # beyond a bare INSERT. Only doctorjob writes them; forms and full_clean() still refuse
    # negative values.
    attempts = models.IntegerField(default=0, validators=[MinValueValidator(0)])
    max_attempts = models.IntegerField(default=3, validators=[MinValueValidator(0)])
    key = models.CharField(max_length=255, null=True, blank=True, help_text="Idempotency key: one job per key.")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="")
    lease_id = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    version = models.IntegerField(
        default=1, validators=[MinValueValidator(0)], help_text="Version of the job it was enqueued with."
    )
    concurrency_key = models.CharField(
        max_length=255, null=True, blank=True, help_text="At most one running job per key (singleton jobs)."
    )
    progress = models.JSONField(null=True, blank=True, help_text="Saved by the handler; kept across attempts.")
    # Job trees. Nullable, so that the many jobs outside a tree store nothing and enqueue()'s
    # INSERT does not name them. No foreign key constraint: pruning deletes a finished parent
    # without touching its finished children, and a child row costs no lookup of its parent.
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="children",
        help_text="The job that runs once its children have finished.",
    )
    on_failure = models.CharField(
        max_length=16, null=True, blank=True, choices=OnFailure.choices, help_text="What this child's failure does."
    )
    pending_children = models.IntegerField(
        null=True, blank=True, help_text="Children still to finish before this job can run."
    )
    relayed_at = models.DateTimeField(null=True, blank=True, help_text="When the broker confirmed the job (relays).")

    class Meta:
        # Every status change is a non-HOT update that adds the new row version to each index
        # whose predicate it matches, so indexes are partial wherever a query allows: a queued
        # job without a key enters 3 indexes (pk, the two claim indexes), a running one 2 (pk,
        # lease), a succeeded one 2 (pk, retention); a key adds the key index to each.
        constraints = [
            # Idempotency keys. Partial, so that the many jobs without a key stay out of it, and
            # a constraint rather than unique=True, which on PostgreSQL adds a LIKE-pattern index
            # no query uses. MySQL has no partial indexes: migration 0002 gives it a plain one.
            models.UniqueConstraint(fields=["key"], condition=Q(key__isnull=False), name="doctorjob_job_key_unique"),
            # Singleton and per-key jobs: the running row itself is the lock, so a crashed
            # worker leaves nothing behind once the lease sweep requeues its job.
            models.UniqueConstraint(
                fields=["concurrency_key"],
                name="doctorjob_job_one_running_per_key",
                condition=Q(status="running", concurrency_key__isnull=False),
            ),
        ]
        indexes = [
            # The claim query: runnable jobs in (priority desc, run_at, id) order, per queue or not.
            models.Index(
                fields=["queue", "-priority", "run_at", "id"],
                name="doctorjob_job_claim",
                condition=Q(status="queued"),
            ),
            models.Index(
                fields=["-priority", "run_at", "id"],
                name="doctorjob_job_claim_any",
                condition=Q(status="queued"),
            ),
            # The claim's check that a keyed job is the first of its key in line (singletons,
            # concurrency_key): only queued jobs that hold a key enter it.
            models.Index(
                fields=["concurrency_key", "-priority", "run_at", "id"],
                name="doctorjob_job_key_line",
                condition=Q(status="queued", concurrency_key__isnull=False),
            ),
            # The lease sweep: running jobs by deadline.
            models.Index(fields=["lease_expires_at"], name="doctorjob_job_lease", condition=Q(status="running")),
            # Retention: succeeded jobs by age.
            models.Index(fields=["finished_at"], name="doctorjob_job_succeeded", condition=Q(status="succeeded")),
            # A parent's children (results, failures, the admin): only children enter it.
            models.Index(fields=["parent"], name="doctorjob_job_parent", condition=Q(parent__isnull=False)),
            # Retention of relayed jobs (the broker has them): relayed jobs by age.
            models.Index(fields=["finished_at"], name="doctorjob_job_relayed", condition=Q(status="relayed")),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"


_template: dict[str, Any] = {}


def new_job(**values: Any) -> Job:
    """``Job(**values)`` at a fifth of the cost, for enqueue_many's tens of thousands of jobs
    and the thousands a second a worker claims:
    the instance is made the way Django unpickles one (``__new__`` and its ``__dict__``),
    skipping ``Model.__init__``'s per-field work. ``values`` holds every field whose default
    is callable; the other defaults are immutable and shared. The ``__dict__`` is a copy of a
    template that already has every key, so filling it never grows it."""
    if not _template:
        _template.update(
            (f.attname, None if f.has_default() and callable(f.default) else f.get_default())
            for f in Job._meta.concrete_fields
        )
        _template["_state"] = None
    job = Job.__new__(Job)
    job.__dict__ = state = _template.copy()
    state.update(values)
    state["_state"] = ModelState()
    return job


class DeadLetter(models.Model):
    """A job that failed for good, kept with its own copy of what is needed to requeue it,
    so pruning jobs never loses a dead letter."""

    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    key = models.CharField(max_length=255, null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeued_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        permissions = [("requeue_deadletter", "Can requeue dead letters")]
        indexes = [models.Index(fields=["created_at"], name="doctorjob_deadletter_created")]

    def __str__(self) -> str:
        return f"{self.name} (dead letter #{self.pk})"


class JobDefinition(models.Model):
    """A job known to the code, kept in sync with the registry so history outlives code."""

    name = models.CharField(max_length=200, unique=True)
    queue = models.CharField(max_length=100, default="default")
    options = models.JSONField(default=dict, blank=True)
    schedule = models.CharField(max_length=200, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    paused = models.BooleanField(default=False)
    retired = models.BooleanField(default=False)
    version = models.PositiveIntegerField(default=1)
    min_version = models.PositiveIntegerField(default=1)
    scheduled_since = models.DateTimeField(
        null=True, blank=True, help_text="Ticks before this time (the schedule's last change) are never enqueued."
    )
    last_tick = models.DateTimeField(
        null=True, blank=True, help_text="The latest schedule tick enqueued: no tick up to it is enqueued again."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        permissions = [("run_jobdefinition", "Can run a job now")]

    def __str__(self) -> str:
        return self.name


class QueueState(models.Model):
    """A queue an operator paused: workers claim nothing from it until it is resumed."""

    name = models.CharField(max_length=100, unique=True)
    paused = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "queue"

    def __str__(self) -> str:
        return self.name


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"
    LOST = "lost", "lost"
    RELAYED = "relayed", "relayed"


class JobExecution(models.Model):
    """One attempt of a job: who ran it, when, for how long, and how it ended."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="executions", db_index=False)
    attempt = models.PositiveIntegerField(default=1)
    worker = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["job", "attempt"], name="doctorjob_execution_job")]

    def __str__(self) -> str:
        return f"{self.job_id} attempt {self.attempt}: {self.outcome}"


class Worker(models.Model):
    """A running ``run_jobs`` process; removed on clean exit, marked lost when it stops beating."""

    name = models.CharField(max_length=255, unique=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    queues = models.CharField(max_length=1000, blank=True, default="", help_text="Empty: every queue.")
    concurrency = models.PositiveIntegerField(default=1)
    lease = models.FloatField(default=30.0)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now)
    # Written with the heartbeat after a claim that took jobs: check_workers tells a wedged
    # worker (beating, claiming nothing while jobs are due) from an idle one.
    last_claimed_at = models.DateTimeField(null=True, blank=True)
    lost = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class JobVersion(models.Model):
    """One version of a definition: the options, schedule and default payload it had."""

    definition = models.ForeignKey(JobDefinition, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    options = models.JSONField(default=dict, blank=True)
    schedule = models.CharField(max_length=200, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["definition", "number"], name="doctorjob_jobversion_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.definition} v{self.number}"


class MaintenanceLease(models.Model):
    """Which worker does the cluster-wide chores (lease sweep, lost workers, pruning, schedule
    ticks) until ``expires_at``: a row lease, renewed by its holder and taken over once it runs
    out, because session advisory locks do not survive a transaction pooler."""

    name = models.CharField(max_length=100, primary_key=True)
    holder = models.CharField(max_length=255)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.holder}"


class OutcomeTotal(models.Model):
    """How many attempts of a queue's jobs ended each way (``outcome``: an execution's outcome,
    or ``dead`` for dead letters) since the install: never pruned, so the metrics' counters
    never go down (doctorjob.totals)."""

    queue = models.CharField(max_length=100)
    outcome = models.CharField(max_length=16)
    total = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["queue", "outcome"], name="doctorjob_outcometotal_unique")]

    def __str__(self) -> str:
        return f"{self.queue} {self.outcome}: {self.total}"


class TotalsMark(models.Model):
    """Up to when the execution history and the dead letters are counted into ``OutcomeTotal``:
    one row, moved only from the value a round began with."""

    counted_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"counted until {self.counted_until}"
