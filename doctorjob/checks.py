"""System checks: a malformed DOCTORJOB setting is reported at start-up, not at 3 a.m."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core import checks

from .conf import DEFAULTS


def _number(value: Any, minimum: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum


_RULES = {
    "REQUIRE_TRANSACTION": (lambda v: isinstance(v, bool), "True or False"),
    "KEEP_SUCCEEDED": (lambda v: isinstance(v, timedelta) and v >= timedelta(0), "a timedelta >= 0"),
    "BACKOFF": (lambda v: isinstance(v, dict), "a dict with base, factor, cap, jitter"),
    "NOTIFY": (lambda v: isinstance(v, bool), "True or False"),
    "LISTEN_DATABASE": (lambda v: v is None or v is False or v in django_settings.DATABASES,
                        "None, False or an alias in DATABASES"),
    "CONCURRENCY": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "BATCH_SIZE": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "POLL_INTERVAL": (lambda v: _number(v, 0.001), "a number of seconds > 0"),
    "LEASE": (lambda v: _number(v, 3), "a number of seconds >= 3"),
    "SHUTDOWN_TIMEOUT": (lambda v: _number(v, 0), "a number of seconds >= 0"),
    "JOBS": (lambda v: isinstance(v, dict), "a dict of job name -> overrides"),
}


@checks.register()
def check_settings(app_configs=None, **kwargs: Any) -> list[checks.CheckMessage]:
    value = getattr(django_settings, "DOCTORJOB", {})
    if not isinstance(value, dict):
        return [checks.Error("DOCTORJOB must be a dict", obj="settings.DOCTORJOB", id="doctorjob.E001")]
    errors: list[checks.CheckMessage] = []
    for key, item in value.items():
        if key not in DEFAULTS:
            errors.append(checks.Error(
                f"DOCTORJOB has an unknown key {key!r}",
                hint="Known keys: " + ", ".join(sorted(DEFAULTS)), obj="settings.DOCTORJOB", id="doctorjob.E002",
            ))
        elif not _RULES[key][0](item):
            errors.append(checks.Error(
                f"DOCTORJOB[{key!r}] must be {_RULES[key][1]}, got {item!r}",
                obj="settings.DOCTORJOB", id="doctorjob.E003",
            ))
    if isinstance(value.get("BACKOFF"), dict):
        from .retry import make_backoff

        try:
            make_backoff(value["BACKOFF"], DEFAULTS["BACKOFF"])
        except (TypeError, ValueError) as exc:
            errors.append(checks.Error(f"DOCTORJOB['BACKOFF']: {exc}", obj="settings.DOCTORJOB",
                                       id="doctorjob.E004"))
    return errors
