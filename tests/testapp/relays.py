"""Relays of the tests' own: a custom Relay subclass, and one that dies after publishing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from doctorjob.relays import CeleryRelay, Relay, RelayUnavailable


class FileRelay(Relay):
    """Appends each job as a JSON line to ``path``; ``fail`` (a file) makes it raise, ``down``
    (a file) makes the broker unreachable."""

    def __init__(self, path: str, fail: str = "", down: str = "") -> None:
        self.path, self.fail, self.down = Path(path), fail, down

    def publish(self, jobs):
        if self.down and os.path.exists(self.down):
            raise RelayUnavailable("the file broker is down")
        if self.fail and os.path.exists(self.fail):
            raise ValueError("the file broker refused the batch")
        with self.path.open("a") as f:
            for job in jobs:
                f.write(json.dumps({"id": job.id, "name": job.name, "queue": job.queue, "payload": job.payload}) + "\n")


class DyingCeleryRelay(CeleryRelay):
    """Publishes, then SIGKILLs its own process before the relay records anything, once per
    ``marker`` file: the relay's crash between the broker's confirmation and its own write."""

    def __init__(self, marker: str, **options) -> None:
        super().__init__(**options)
        self.marker = marker

    def publish(self, jobs):
        super().publish(jobs)
        if self.marker and not os.path.exists(self.marker):
            Path(self.marker).write_text(",".join(str(job.id) for job in jobs))
            os.kill(os.getpid(), signal.SIGKILL)
