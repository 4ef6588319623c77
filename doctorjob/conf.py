"""doctorjob's settings: ``settings.DOCTORJOB`` merged over the defaults, read lazily."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # enqueue() outside transaction.atomic() raises TransactionRequired instead of autocommitting.
    "REQUIRE_TRANSACTION": False,
    # Succeeded jobs older than this are pruned by running workers.
    "KEEP_SUCCEEDED": timedelta(days=7),
    # Retry delay: min(cap, base * factor ** (attempt - 1)) seconds, stretched by up to `jitter`.
    "BACKOFF": {"base": 1.0, "factor": 2.0, "cap": 3600.0, "jitter": 0.5},
    # PostgreSQL: NOTIFY workers when a job is enqueued (delivered at commit).
    "NOTIFY": True,
    # PostgreSQL: database alias whose connection workers LISTEN on. None: the worker's own
    # database. Set it to a direct (non-PgBouncer) alias when the default goes through a
    # transaction-pooling bouncer; set it to False to poll only.
    "LISTEN_DATABASE": None,
    # PostgreSQL: prepare enqueue()'s INSERT once per connection instead of parsing and planning
    # it on every call. None: yes, unless the database sets DISABLE_SERVER_SIDE_CURSORS (Django's
    # setting for PgBouncer in transaction pooling mode). True or False to decide yourself.
    "PREPARE": None,
    # The largest payload enqueue() accepts, in bytes of JSON: within what every supported
    # database takes in one value (MariaDB's default max_allowed_packet is 16 MiB).
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    # Worker defaults; `run_jobs` options override them.
    "CONCURRENCY": 4,
    "BATCH_SIZE": 100,
    "POLL_INTERVAL": 1.0,
    "LEASE": 30.0,
    "SHUTDOWN_TIMEOUT": 30.0,
    # Seconds an attempt may run before it fails as timed out (and is retried); None: no limit.
    # @job(timeout=...) overrides it per job.
    "TIMEOUT": None,
    # Per-job overrides by operations (schedule, payload, version, paused), see README.
    "JOBS": {},
    # Outbox relays, run by `run_jobs --relay` (doctorjob.relays): {name: {"BACKEND": "<dotted
    # class>", "OPTIONS": {...}, "QUEUES": [...]}}; a job is relayed by @job(relay=name) or by
    # being enqueued in one of a relay's QUEUES, and then never run by a plain worker.
    "RELAYS": {},
    # The metrics view answers a request bearing "Authorization: Bearer <this>" (a Prometheus
    # scraper); None: only logged-in users with the doctorjob.view_job permission.
    "METRICS_TOKEN": None,
    # check_workers: a live worker that claimed nothing for this many seconds while jobs it
    # takes were due is wedged.
    "WEDGED_AFTER": 300.0,
}


# The range of each worker number: past it a value is a typo, and some would overflow a
# datetime or a database integer (a lease of 1e12 seconds, a batch of 10**20 jobs).
LIMITS: dict[str, tuple[float, float]] = {
    "CONCURRENCY": (1, 1000),
    "BATCH_SIZE": (1, 10_000),
    "POLL_INTERVAL": (0.001, 3600.0),
    "LEASE": (3.0, 86_400.0),
    "SHUTDOWN_TIMEOUT": (0.0, 86_400.0),
    "MAX_JOBS": (1, 2**31 - 1),
    "PROCESSES": (1, 64),
    "TIMEOUT": (0.1, 7 * 86_400.0),
    "WEDGED_AFTER": (1.0, 7 * 86_400.0),
}
# The longest retention a setting may ask for.
MAX_KEEP_SUCCEEDED = timedelta(days=3650)


def out_of_range(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``name`` (a key of LIMITS), or None."""
    low, high = LIMITS[name]
    integer = isinstance(low, int) and isinstance(high, int)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        return f"must be {what} from {low:g} to {high:g}, got {value!r}"
    return None


class Settings:
    """Attribute access to DOCTORJOB settings with defaults. Once read, the values are plain
    instance attributes (enqueue reads several per call), until settings change."""

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, "DOCTORJOB", {})
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:  # only for attributes not loaded yet
        if name not in DEFAULTS:
            raise AttributeError(name)
        user = self.user_settings
        merged = {**DEFAULTS, **user}
        user_backoff = user.get("BACKOFF")
        merged["BACKOFF"] = {**DEFAULTS["BACKOFF"], **(user_backoff if isinstance(user_backoff, dict) else {})}
        self.__dict__.update((key, merged[key]) for key in DEFAULTS)
        return merged[name]

    def reset(self, **kwargs: Any) -> None:
        if kwargs.get("setting") in (None, "DOCTORJOB"):
            for name in DEFAULTS:
                self.__dict__.pop(name, None)


settings = Settings()
setting_changed.connect(settings.reset)
