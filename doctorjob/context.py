"""The context object handed to handlers as their second argument."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

logger = logging.getLogger("doctorjob")


class JobLogger(logging.LoggerAdapter):
    """``ctx.logger``: the doctorjob logger with the job's id and name on every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[job_id={extra['job_id']} name={extra['job_name']}] {msg}", {
            **kwargs, "extra": {**extra, **kwargs.get("extra", {})}
        }


@dataclass(frozen=True)
class JobContext:
    """What a handler knows about the attempt it runs."""

    job_id: int
    name: str
    queue: str
    attempt: int
    max_attempts: int
    key: str | None = None
    enqueued_at: datetime | None = None
    worker: str = ""
    logger: logging.LoggerAdapter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        adapter = JobLogger(logger, {"job_id": self.job_id, "job_name": self.name, "attempt": self.attempt})
        object.__setattr__(self, "logger", adapter)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts
