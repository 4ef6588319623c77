"""The Celery application the bench's relay publishes to (the broker from the bench)."""

from __future__ import annotations

import os

from celery import Celery

from .relay import CELERY_BROKER_ENV

app = Celery("doctorjob_bench", broker=os.environ.get(CELERY_BROKER_ENV, "redis://127.0.0.1:6379/7"))
