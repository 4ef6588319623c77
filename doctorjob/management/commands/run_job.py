"""``run_job``: the old name of ``enqueue_job``, too easily taken for ``run_jobs``; removed in 0.3."""

from typing import Any

from .enqueue_job import Command as EnqueueJob


class Command(EnqueueJob):
    help = "Deprecated alias of enqueue_job (removed in doctorjob 0.3). " + EnqueueJob.help

    def handle(self, *args: Any, **options: Any) -> None:
        self.stderr.write("run_job is deprecated and will be removed in doctorjob 0.3: use enqueue_job")
        super().handle(*args, **options)
