"""Backoff policy for retries: pure functions, no database."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

MAX_SECONDS = 365 * 24 * 3600.0  # the longest retry delay: past it, a typo, and past 9999 an overflow


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``min(cap, base * factor ** (attempt - 1))`` seconds,
    stretched by a random factor in ``[1, 1 + jitter]`` so failing jobs don't retry in lockstep."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"backoff {f.name} must be a number >= 0, got {value!r}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor!r}")
        for name in ("base", "cap"):
            if getattr(self, name) > MAX_SECONDS:
                raise ValueError(
                    f"backoff {name} must be at most a year ({MAX_SECONDS:g} seconds), got {getattr(self, name)!r}"
                )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based)."""
        try:
            raw = self.base * float(self.factor) ** max(attempt - 1, 0)
        except OverflowError:  # a very late attempt: the cap applies anyway
            raw = math.inf if self.base else 0.0
        return min(self.cap, raw * (1 + random.random() * self.jitter))


BackoffSpec = Backoff | Mapping[str, float] | Callable[[int], float | timedelta] | None


def make_backoff(spec: BackoffSpec, default: Mapping[str, Any]) -> Backoff | Callable[[int], float | timedelta]:
    """Turn a user's ``backoff=`` (None, a dict of Backoff's fields, a Backoff or a callable)
    into something with a delay; a dict is merged over the global default."""
    if spec is None:
        return Backoff(**default)
    if isinstance(spec, Backoff) or callable(spec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {f.name for f in fields(Backoff)}
        if unknown:
            raise ValueError(f"unknown backoff key(s) {sorted(unknown)}; use base, factor, cap, jitter")
        return Backoff(**{**default, **spec})
    raise TypeError(f"backoff must be a dict, a Backoff or a callable, got {type(spec).__name__}")


def retry_delay(backoff: Backoff | Callable[[int], float | timedelta], attempt: int) -> float:
    """Seconds until the retry after ``attempt``, whatever form the backoff has."""
    value = backoff.delay(attempt) if isinstance(backoff, Backoff) else backoff(attempt)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return max(float(value), 0.0)
