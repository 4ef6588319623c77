"""Process plumbing for ``run_jobs``: signals that stop a worker, several worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol


class Stoppable(Protocol):
    """A worker or a relay: what the signals stop."""

    def stop(self, *, now: bool = False) -> None: ...


@contextmanager
def stop_on_signals(worker: Stoppable, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Stop ``worker`` gracefully on the first SIGTERM/SIGINT and at once on the second.

    The Python-level handler does nothing: the signal's number reaches a socket through
    ``signal.set_wakeup_fd`` and a thread reads it and calls ``stop()``. Calling ``stop()``
    from the handler itself could deadlock, should the signal land while the main thread holds
    the lock of the Event that ``stop()`` sets.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def watch() -> None:
        received = 0
        try:
            while data := reader.recv(64):
                for signum in data:
                    if signum in signals:
                        worker.stop(now=received > 0)
                        received += 1
        except OSError:  # closed below as the block exits (run_jobs ending at once): nothing to watch
            return

    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in signals}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=watch, name="doctorjob-signals", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()
        reader.close()


def run_processes(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` copies of the worker command ``argv`` and wait for them all.

    Each child has its own session, so a Ctrl-C in the terminal reaches only this parent, which
    passes SIGTERM/SIGINT on once: children shut down gracefully, a second signal stops them at
    once. Returns the first non-zero exit code, else 0.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    children = [subprocess.Popen(list(argv), env=env, start_new_session=True) for _ in range(count)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((code for code in codes if code), 0)
