"""Signals sent as a job moves, so that code reacts to "this job finished" in one place.

- ``job_enqueued(sender=Job, job=...)``: sent by ``enqueue()`` once the row is written, inside
  the caller's transaction; a receiver's exception reaches the caller, as with Django's model
  signals. ``enqueue_many()`` sends none, like ``bulk_create()``.
- ``job_started(sender=Job, job=...)``: sent by the worker, in the handler's thread, before the
  handler runs.
- ``job_finished(sender=Job, job=..., outcome=...)``: sent by the worker once the outcome is
  committed; ``outcome`` is ``"succeeded"``, ``"retrying"`` (``job.status`` is ``queued`` again),
  ``"dead"``, ``"skipped"`` or ``"relayed"`` (from a relay), and ``job.status``, ``job.attempts``
  and ``job.error`` are as stored.

In the worker, a receiver that raises is logged with its traceback and changes neither the
job's outcome nor the worker's life.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

job_enqueued = Signal(use_caching=True)
job_started = Signal(use_caching=True)
job_finished = Signal(use_caching=True)

SUCCEEDED, RETRYING, DEAD, SKIPPED = "succeeded", "retrying", "dead", "skipped"
RELAYED = "relayed"  # a relay's broker confirmed the job (doctorjob.relays)

logger = logging.getLogger("doctorjob")


_sender = None


def _load_sender() -> type:
    """The Job model, looked up at the first send (this module is imported before models load)."""
    global _sender
    from .models import Job

    _sender = Job
    return Job


def send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send from the worker, thousands of times a second: each receiver's error is logged with
    its traceback, never raised. Django's own ``send_robust()`` costs several microseconds more
    a call; asynchronous receivers go through it."""
    if not signal.receivers:
        return
    Job = _sender or _load_sender()
    receivers, async_receivers = signal._live_receivers(Job)
    if async_receivers:
        results = signal.send_robust(sender=Job, **kwargs)
    else:
        results = []
        for receiver in receivers:
            try:
                receiver(signal=signal, sender=Job, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported below, as Django's send_robust does
                results.append((receiver, exc))
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "signal receiver %s raised: %r",
                getattr(receiver, "__qualname__", receiver),
                result,
                exc_info=(type(result), result, result.__traceback__),
            )
