from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import WorkerProcess, worker_env


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, for fixtures that act on a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def workers(transactional_db, tmp_path: Path, request) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``run_jobs`` processes: ``workers("--concurrency", "2")`` returns a WorkerProcess,
    by default once it logged that it started; ``env`` adds to its environment.

    Depends on ``transactional_db`` so that every worker still alive at the end of the test is
    killed before the database is flushed. When the test failed, each worker still running
    first prints its log with the stack of every thread, to show where it was stuck.
    """
    started: list[WorkerProcess] = []

    def start(
        *args: str, wait: bool = True, database_url: str | None = None, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(
            list(args), tmp_path / f"worker-{len(started) + 1}.log", {**worker_env(database_url), **(env or {})}
        )
        started.append(worker)
        if wait:
            worker.wait_started()
        return worker

    try:
        yield start
    finally:
        report = getattr(request.node, "report_call", None)
        for worker in started:
            if report is not None and report.failed and worker.alive():
                worker.dump_stacks()
                print(f"----- {worker}, still running when the test failed -----\n{worker.output()[-8000:]}")
            worker.close()
