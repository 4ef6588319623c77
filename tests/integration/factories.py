"""factory-boy factories for rows enqueue() does not create itself: dead letters and jobs in
odd states. Never use them to bypass enqueue() when testing it."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from doctorjob.models import DeadLetter, Job, Status


class JobFactory(DjangoModelFactory):
    """A queued job; the traits put it in the states a worker would have left it in."""

    class Meta:
        model = Job

    name = "tests.noop"
    queue = "default"
    payload = factory.LazyFunction(dict)
    status = Status.QUEUED
    max_attempts = 3

    class Params:
        running = factory.Trait(
            status=Status.RUNNING,
            attempts=1,
            started_at=factory.LazyFunction(timezone.now),
            worker="test-host:1",
            lease_id=factory.LazyFunction(uuid4),
            lease_expires_at=factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=30)),
        )
        succeeded = factory.Trait(
            status=Status.SUCCEEDED,
            attempts=1,
            started_at=factory.LazyFunction(timezone.now),
            finished_at=factory.LazyFunction(timezone.now),
            result=None,
        )
        dead = factory.Trait(
            status=Status.DEAD,
            attempts=factory.SelfAttribute("max_attempts"),
            finished_at=factory.LazyFunction(timezone.now),
            error="RuntimeError: boom",
            traceback="Traceback (most recent call last):\nRuntimeError: boom",
        )
        cancelled = factory.Trait(status=Status.CANCELLED, finished_at=factory.LazyFunction(timezone.now))


class DeadLetterFactory(DjangoModelFactory):
    """A dead letter with the dead job it came from; ``requeued=True`` marks it requeued."""

    class Meta:
        model = DeadLetter

    name = "tests.noop"
    queue = "default"
    payload = factory.LazyFunction(dict)
    attempts = factory.SelfAttribute("max_attempts")
    max_attempts = 3
    error = "RuntimeError: boom"
    traceback = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    job = factory.SubFactory(
        JobFactory,
        dead=True,
        name=factory.SelfAttribute("..name"),
        queue=factory.SelfAttribute("..queue"),
        payload=factory.SelfAttribute("..payload"),
        max_attempts=factory.SelfAttribute("..max_attempts"),
        error=factory.SelfAttribute("..error"),
        traceback=factory.SelfAttribute("..traceback"),
    )

    class Params:
        requeued = factory.Trait(
            requeued_at=factory.LazyFunction(timezone.now),
            requeued_job=factory.SubFactory(
                JobFactory,
                name=factory.SelfAttribute("..name"),
                queue=factory.SelfAttribute("..queue"),
                payload=factory.SelfAttribute("..payload"),
            ),
        )
