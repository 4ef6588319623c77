"""The ``@job`` decorator and the name → job type map every process builds at start-up."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, overload

from django.core.exceptions import ImproperlyConfigured

from .exceptions import InvalidPayload, UnknownJob
from .retry import Backoff, BackoffSpec

Handler = Callable[[Any, Any], Any]
H = TypeVar("H", bound=Callable[..., Any])  # a handler, returned by @job as it came
# Queue names: what run_jobs --queues can name (no comma, no surrounding space) and what every
# database stores as it is.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
QUEUE_RULE = "a queue name is 1 to 100 letters, digits, '_', '-', '.' or ':'"


@dataclass(frozen=True)
class JobType:
    """Everything doctorjob knows about one registered job."""

    name: str
    func: Handler = field(repr=False, compare=False)
    queue: str = "default"
    max_attempts: int = 3
    priority: int = 0
    backoff: BackoffSpec = None
    atomic: bool = False
    schema: Mapping[str, Any] | None = None
    version: int = 1
    min_version: int = 1
    schedule: str = ""
    payload: Any = None
    singleton: bool = False
    on_overlap: str = "wait"
    concurrency_key: Callable[[Any], Any] | None = field(default=None, compare=False)
    timeout: float | None = None
    relay: str | None = None  # published by this relay (DOCTORJOB["RELAYS"]), never run by a worker
    task: str | None = None  # the relay's task name (Celery), default the job's name

    @property
    def options(self) -> dict[str, Any]:
        """What a new version should be declared for when it changes (stored on JobVersion)."""
        return {
            "queue": self.queue,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "atomic": self.atomic,
            "schema": self.schema,
            "singleton": self.singleton,
            "on_overlap": self.on_overlap,
            "concurrency_key": self.concurrency_key is not None,
            **({"timeout": self.timeout} if self.timeout is not None else {}),
            **({"relay": self.relay, "task": self.task or self.name} if self.relay else {}),
        }

    def key_for(self, payload: Any) -> str | None:
        """The concurrency key a job with ``payload`` holds while it runs, if any."""
        if self.singleton:
            return self.name
        if self.concurrency_key is None:
            return None
        try:
            return f"{self.name}:{self.concurrency_key(payload)}"
        except Exception as exc:
            raise InvalidPayload(f"concurrency_key of job '{self.name}' failed on the payload: {exc!r}") from exc

    def call(self, payload: Any, ctx: Any) -> Any:
        """Run the handler for one attempt. How a handler is called is the job type's business:
        another calling convention (say, ``Task.call(*args, **kwargs)``) overrides this alone."""
        return self.func(payload, ctx)

    @property
    def queues(self) -> frozenset[str]:
        """The queues its jobs are enqueued on, for run_jobs' warning about a queue no job uses."""
        return frozenset([self.queue])

    @property
    def path(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"

    def validate(self, payload: Any) -> None:
        """Raise InvalidPayload if ``payload`` breaks the job's JSON Schema."""
        if self.schema is None:
            return
        from jsonschema.exceptions import best_match

        error = best_match(_validator(self.schema).iter_errors(payload))
        if error is not None:
            where = "payload" + "".join(f"[{p!r}]" for p in error.absolute_path)
            raise InvalidPayload(f"{where} does not match the schema of job '{self.name}': {error.message}")

    def backoff_policy(self) -> Backoff | Callable[[int], float | timedelta]:
        from .conf import settings
        from .retry import make_backoff

        return make_backoff(self.backoff, settings.BACKOFF)

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the retry of failed attempt ``attempt``, at most a year (a backoff
        function's 1e12 s would overflow ``run_at``); at once if the user's backoff raises."""
        from .retry import MAX_SECONDS, retry_delay

        try:
            return min(retry_delay(self.backoff_policy(), attempt), MAX_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a user's backoff function
            logging.getLogger("doctorjob").exception("backoff of job %s failed, retrying at once: %r", self.name, exc)
            return 0.0


_validators: dict[int, Any] = {}


def _validator(schema: Mapping[str, Any]) -> Any:
    key = id(schema)
    if key not in _validators:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))
        _validators[key] = cls(schema)
    return _validators[key]


registry: dict[str, JobType] = {}


@overload
def job(name: H, /) -> H: ...


@overload
def job(
    name: str | None = None,
    *,
    queue: str = ...,
    max_attempts: int = ...,
    priority: int = ...,
    backoff: BackoffSpec = ...,
    atomic: bool = ...,
    schema: Mapping[str, Any] | None = ...,
    version: int = ...,
    min_version: int | None = ...,
    schedule: str | None = ...,
    payload: Any = ...,
    singleton: bool = ...,
    on_overlap: str = ...,
    concurrency_key: Callable[[Any], Any] | None = ...,
    timeout: float | None = ...,
    relay: str | None = ...,
    task: str | None = ...,
) -> Callable[[H], H]: ...


def job(
    name: str | Handler | None = None,
    *,
    queue: str = "default",
    max_attempts: int = 3,
    priority: int = 0,
    backoff: BackoffSpec = None,
    atomic: bool = False,
    schema: Mapping[str, Any] | None = None,
    version: int = 1,
    min_version: int | None = None,
    schedule: str | None = None,
    payload: Any = None,
    singleton: bool = False,
    on_overlap: str = "wait",
    concurrency_key: Callable[[Any], Any] | None = None,
    timeout: float | None = None,
    relay: str | None = None,
    task: str | None = None,
) -> Any:
    """Register ``handler(payload, ctx)`` as a job; ``name`` defaults to its dotted path.

    Usable bare (``@job``) or with options (``@job("emails.send", queue="emails")``).
    The function is returned unchanged, with ``.job`` set to its JobType.

    ``schedule`` (cron, 5 fields or 6 with seconds first) makes workers enqueue it with
    ``payload``; ``version``/``min_version`` retire old job data; ``singleton`` and
    ``concurrency_key`` keep runs from overlapping (``on_overlap``: "wait" or "skip").
    ``relay`` names a relay of ``DOCTORJOB["RELAYS"]`` that publishes the jobs to a broker
    (``task``: the task name there) instead of a worker running the handler.
    """
    if callable(name):  # bare @job
        return job()(name)
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise ImproperlyConfigured(f"@job queue: {QUEUE_RULE}, got {queue!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts < 2**31:
        raise ImproperlyConfigured(f"@job max_attempts must be an integer from 1 to 2147483647, got {max_attempts!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        raise ImproperlyConfigured(f"@job priority must be an integer from -2147483648 to 2147483647, got {priority!r}")
    if schema is not None:
        import jsonschema

        try:
            _validator(schema)
        except jsonschema.SchemaError as exc:
            raise ImproperlyConfigured(f"@job schema is not a valid JSON Schema: {exc.message}") from exc
    if backoff is not None:
        from .retry import make_backoff

        try:
            make_backoff(backoff, {})
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"@job backoff: {exc}") from exc

    for arg, value in (("version", version), ("min_version", min_version if min_version is not None else 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
            raise ImproperlyConfigured(f"@job {arg} must be an integer from 1 to 2147483647, got {value!r}")
    if min_version is not None and min_version > version:
        raise ImproperlyConfigured(f"@job min_version ({min_version}) is above version ({version})")
    if on_overlap not in ("wait", "skip"):
        raise ImproperlyConfigured(f"@job on_overlap must be 'wait' or 'skip', got {on_overlap!r}")
    if timeout is not None:
        from .conf import out_of_range

        if problem := out_of_range("TIMEOUT", timeout):
            raise ImproperlyConfigured(f"@job timeout {problem}")
    if concurrency_key is not None and not callable(concurrency_key):
        raise ImproperlyConfigured("@job concurrency_key must be a function of the payload")
    for arg, text in (("relay", relay), ("task", task)):
        if text is not None and (not isinstance(text, str) or not text or len(text) > 200):
            raise ImproperlyConfigured(f"@job {arg} must be a non-empty name of at most 200 characters, got {text!r}")
    if task is not None and relay is None:
        raise ImproperlyConfigured("@job task is the name a relay publishes the job under: give relay= too")
    if schedule:
        from .schedule import ScheduleError, validate_schedule

        try:
            validate_schedule(schedule)
        except ScheduleError as exc:
            raise ImproperlyConfigured(f"@job schedule: {exc}") from exc

    def decorator(func: Handler) -> Handler:
        job_name = name or f"{func.__module__}.{func.__qualname__}"
        job_type = JobType(
            job_name,
            func,
            queue,
            max_attempts,
            priority,
            backoff,
            atomic,
            schema,
            version,
            1 if min_version is None else min_version,
            schedule or "",
            payload,
            singleton,
            on_overlap,
            concurrency_key,
            timeout,
            relay,
            task,
        )
        if payload is not None or schedule:  # every tick carries it ({} when none is given)
            try:
                from .payloads import check_json

                check_json({} if payload is None else payload, job_name)
                job_type.validate({} if payload is None else payload)
            except InvalidPayload as exc:
                what = "payload" if payload is not None else "schedule's payload ({}, as none is given)"
                raise ImproperlyConfigured(f"@job {what}: {exc}") from exc
        existing = registry.get(job_name)
        if existing is not None and existing.path != job_type.path:
            raise ImproperlyConfigured(
                f"job name '{job_name}' is registered twice: by {existing.path} and by {job_type.path}"
            )
        registry[job_name] = job_type
        func.job = job_type  # type: ignore[attr-defined]
        return func

    return decorator


def get_job_type(job: str | Handler | JobType) -> JobType:
    """The JobType for a name or a decorated function; UnknownJob suggests close names."""
    if isinstance(job, JobType):
        return job
    if callable(job):
        job_type = getattr(job, "job", None)
        if not isinstance(job_type, JobType):
            raise UnknownJob(f"{job!r} is not a job: decorate it with @doctorjob.job")
        return job_type
    if not isinstance(job, str):
        raise UnknownJob(f"a job is a registered name or a @job function, got {type(job).__name__}")
    try:
        return registry[job]
    except KeyError:
        close = difflib.get_close_matches(job, registry, n=3)
        hint = (
            f"; did you mean {' or '.join(repr(c) for c in close)}?"
            if close
            else "; jobs are declared with @job in a jobs.py module of an app in INSTALLED_APPS "
            "(<app>/jobs.py), imported at start-up"
        )
        raise UnknownJob(f"unknown job '{job}'{hint}") from None
