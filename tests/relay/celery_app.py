"""The Celery application the relay tests publish to and run real Celery workers of.

Every name comes from the environment, so that each test (and each engineer's parallel run)
has its own broker database and queue: ``DOCTORJOB_TEST_REDIS`` (the broker, Redis database 7
by default) and ``DOCTORJOB_TEST_CELERY_QUEUE``.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

REDIS_URL = os.environ.get("DOCTORJOB_TEST_REDIS", "redis://127.0.0.1:6379/7")
# Where the tasks report: always the real Redis, even while the broker URL points elsewhere.
REPORT_URL = os.environ.get("DOCTORJOB_TEST_REPORT_REDIS", "redis://127.0.0.1:6379/7")

app = Celery("doctorjob_relay_tests", broker=REDIS_URL)
app.conf.update(
    task_default_queue=os.environ.get("DOCTORJOB_TEST_CELERY_QUEUE", "doctorjob-tests"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"socket_connect_timeout": 2},
)


@app.task(name="tests.relay.record", bind=True, acks_late=True)
def record(self: Any, *, run: str, n: int, **payload: Any) -> None:
    """Do the work once per job, however often the relay delivered it: the task id (the job's id)
    is claimed with SET NX before the work, the way a consumer deduplicates."""
    reports = redis.Redis.from_url(REPORT_URL)
    reports.rpush(f"{run}:deliveries", self.request.id)
    if reports.set(f"{run}:seen:{self.request.id}", 1, nx=True, ex=3600):
        reports.rpush(f"{run}:work", f"{self.request.id}:{n}")
