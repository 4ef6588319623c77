"""The watchdog: when a worker's process dies, the jobs it was running pay for it, and only they.

A worker claims jobs in batches and runs a few at a time, so when its process dies (a handler
calls ``os._exit``, native code crashes, the OOM killer or an operator sends SIGKILL) most of
what it held had not started. The lease sweep cannot tell which: it sees leases run out and
counts an attempt for every job. The watchdog can. ``run_jobs`` starts it as a small process
beside the worker, sharing a file of one slot per handler thread: a thread writes its job's id
into its slot before running the job and zero after (a memory write: no system call, no
database), and the main thread lists there the jobs whose outcomes it is saving. The watchdog
sleeps on a pipe from the worker. When the pipe closes without the worker's goodbye, the
process is gone: the watchdog reads the slots and, at once rather than when the leases run
out, records a lost attempt for each job listed (retried after its backoff, dead-lettered
after its last attempt) and returns the others to the queue with their attempts unchanged,
through the same fenced finish as the worker. It loads Django only then.

Should the watchdog die with its worker (the host goes down, the whole process group is killed),
the lease sweep remains. Where file descriptors cannot be passed to a process (Windows) there is
no watchdog.

Run as ``python -m doctorjob.watchdog WORKER_ID ALIAS LEASE VERBOSITY SLOTS_FD SLOTS``, the
pipe on stdin.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("doctorjob")

GOODBYE = b"bye\n"
SLOT = 8  # bytes: a job id, little-endian; 0 for none


class Watchdog:
    """The worker's side: the slots its handler threads write, and the pipe it says goodbye on."""

    def __init__(self, process: subprocess.Popen[bytes], slots: mmap.mmap, count: int, recording: int) -> None:
        self.process, self.pid = process, process.pid
        self._slots = slots
        self._free = list(range(count - 1, -1, -1))
        self._lock = threading.Lock()
        self._recording_at, self._recording_max, self._recorded = count * SLOT, recording, 0

    def take_slot(self) -> int:
        """A slot for a new handler thread (a worker has at most 2 x concurrency + 1 of them:
        the threads abandoned in timed-out jobs, and their replacements)."""
        with self._lock:
            return self._free.pop()

    def give_back(self, slot: int) -> None:
        self.running(slot, 0)
        with self._lock:
            self._free.append(slot)

    def running(self, slot: int, job_id: int) -> None:
        """Before a job starts: its id; after it ended: 0."""
        self._slots[slot * SLOT : (slot + 1) * SLOT] = job_id.to_bytes(SLOT, "little")

    def recording(self, job_ids: Sequence[int]) -> None:
        """The jobs whose outcomes the worker is saving now (their threads' slots are free
        again): should it die doing so, they are charged, not released. Past the region's
        size (a backlog saved after an outage), the rest are left out."""
        ids = list(job_ids[: self._recording_max])
        data = b"".join(job_id.to_bytes(SLOT, "little") for job_id in ids)
        data += bytes(max(0, self._recorded - len(ids)) * SLOT)  # clear what the last call wrote
        self._slots[self._recording_at : self._recording_at + len(data)] = data
        self._recorded = len(ids)

    def close(self) -> None:
        """The worker exits through Python: it recorded or returned what it held itself."""
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(GOODBYE)
            stdin.close()
        except OSError:  # the watchdog is gone already
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass


def start(worker: Worker, verbosity: int = 1) -> Watchdog | None:
    """Start the watchdog of ``worker``; None if it cannot be started (logged)."""
    if os.name != "posix":
        return None
    count = 2 * worker.concurrency + 1  # handler threads, the abandoned ones included
    recording = max(2 * worker.batch_size, 1024)  # outcomes being saved
    size = (count + recording) * SLOT
    try:
        with tempfile.TemporaryFile() as file:  # unlinked: gone with the last process that holds it
            os.ftruncate(file.fileno(), size)
            slots = mmap.mmap(file.fileno(), size)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            argv = [
                sys.executable,
                "-m",
                "doctorjob.watchdog",
                worker.id,
                worker.alias,
                str(worker.lease),
                str(verbosity),
                str(file.fileno()),
                str(size // SLOT),
            ]
            # Its own session: a Ctrl-C in the terminal is for the worker, which the watchdog outlives.
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, env=env, pass_fds=(file.fileno(),), start_new_session=True
            )
    except OSError as exc:
        logger.warning(
            "no watchdog (%s): should this worker die, every job it holds is charged an attempt "
            "when its lease runs out",
            exc,
        )
        return None
    return Watchdog(process, slots, count, recording)


def ids_in(slots: bytes) -> set[int]:
    """The job ids the slots hold."""
    return {int.from_bytes(slots[i : i + SLOT], "little") for i in range(0, len(slots), SLOT)} - {0}


def main(worker_id: str, alias: str, lease: float, verbosity: int, slots_fd: int, count: int) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # a supervisor's stop is for the worker
        signal.signal(signum, signal.SIG_IGN)
    said = b""
    while chunk := os.read(sys.stdin.fileno(), 64):
        said += chunk
    if said == GOODBYE:
        return
    # The worker died: its slots say what it was running, or saving the outcome of.
    running = ids_in(os.pread(slots_fd, count * SLOT, 0))
    try:
        import django

        django.setup()
        from .signal_handlers import configure_logging

        configure_logging(verbosity)
        _recover(worker_id, alias, running, lease)
    except Exception:  # e.g. settings changed under it: say so, and leave the jobs to the lease sweep
        logger.exception(
            "watchdog: could not finish the jobs of worker %s, which died; they return when their leases run out",
            worker_id,
        )
        raise SystemExit(1) from None


def _recover(worker_id: str, alias: str, running: set[int], lease: float) -> None:
    """The worker died: finish what it held. Retried while the database is away, until its
    leases would have run out anyway (the lease sweep does it then)."""
    from django.db import DatabaseError, connections

    deadline = time.monotonic() + lease
    pause = 0.5
    while True:
        try:
            _finish_held(worker_id, alias, running)
            return
        except DatabaseError as exc:
            if time.monotonic() + pause > deadline:
                logger.error(
                    "watchdog: worker %s died and the database stayed away (%s): its jobs return "
                    "when their leases run out",
                    worker_id,
                    exc,
                )
                return
            logger.warning("watchdog: database unavailable, retrying in %.1fs: %s", pause, exc)
            connections[alias].close()
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def _finish_held(worker_id: str, alias: str, running: set[int]) -> None:
    from . import leases
    from .leases import RELEASED, WORKER_DIED, Finish
    from .models import Worker as WorkerRow
    from .signals import job_finished, send_robust

    items = []
    for job in leases.held_by(alias, worker_id):
        if job.id in running:
            items.append(leases.failed(job, leases.retry_or_dead(job), WORKER_DIED, worker=worker_id, lost=True))
        else:
            items.append(Finish(job, RELEASED, worker=worker_id))
    done = leases.finish(alias, items)
    WorkerRow.objects.using(alias).filter(name=worker_id).update(lost=True)
    charged = [f for f in done if f.outcome != RELEASED]
    logger.warning(
        "watchdog: worker %s died; %s job(s) it was running charged an attempt, %s it had not "
        "started returned to the queue, attempts unchanged",
        worker_id,
        len(charged),
        len(done) - len(charged),
    )
    for f in charged:
        send_robust(job_finished, job=f.job, outcome=f.outcome, duration=None)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
