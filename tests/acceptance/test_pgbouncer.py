"""enqueue() behind a real PgBouncer in transaction pooling mode, where one server connection
serves many clients' transactions: a statement prepared by one client is unknown, or in the
way, for the next. doctorjob must prepare nothing when the database says it is behind such a
pooler (DISABLE_SERVER_SIDE_CURSORS, Django's switch for it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.db import connection

from doctorjob.models import Job, JobExecution, Outcome, Status

from .helpers import ROOT, wait_for, worker_database_url, worker_env

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (PgBouncer fronts it)"),
    pytest.mark.skipif(
        shutil.which("pgbouncer") is None,
        reason="needs the pgbouncer program in front of PostgreSQL (Debian: pgbouncer)",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def pgbouncer():
    """A PgBouncer on a free port in transaction mode with ONE server connection, so every
    client's transactions share it, as they do whenever clients outnumber the pool."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="doctorjob-pgbouncer-")
    server = connection.settings_dict
    user = server["USER"] or os.environ.get("USER", "postgres")
    with open(os.path.join(directory, "users.txt"), "w") as f:
        f.write(f'"{user}" ""\n')
    with open(os.path.join(directory, "pgbouncer.ini"), "w") as f:
        f.write(f"""[databases]
* = host={server["HOST"] or "127.0.0.1"} port={server["PORT"] or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
ignore_startup_parameters = extra_float_digits,options
""")
    command = ["pgbouncer", os.path.join(directory, "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        os.chmod(directory, 0o755)
        for name in ("users.txt", "pgbouncer.ini"):
            os.chmod(os.path.join(directory, name), 0o644)
        command[1:1] = ["-u", "postgres"]
    log = os.path.join(directory, "pgbouncer.log")
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            assert process.poll() is None, Path(log).read_text()
            return False

    wait_for(accepting, timeout=10, message="PgBouncer to listen")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


# One client of the pooler: a Django process of the tests' project enqueueing in its own
# transactions, each of which may run on whichever server connection the pooler hands out.
CLIENT = """
import sys
import django
from django.db import transaction
from django.test.utils import override_settings

django.setup()
from doctorjob import enqueue

with override_settings(DOCTORJOB={"PREPARE": True} if sys.argv[2] == "prepare" else {}):
    for n in range(int(sys.argv[3])):
        with transaction.atomic():
            enqueue("tests.noop", {"n": n, "via": sys.argv[1]})
"""


def pooled_url(port: int) -> str:
    """The test database through PgBouncer, as Django is told to use it behind a transaction pooler."""
    url = worker_database_url().replace(f":{connection.settings_dict['PORT'] or 5432}/", f":{port}/", 1)
    return f"{url}?disable_server_side_cursors=True"


def client(port: int, name: str, jobs: int, *, prepare: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT, name, "prepare" if prepare else "default", str(jobs)],
        cwd=ROOT,
        env=worker_env(pooled_url(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enqueue_through_a_transaction_pooler_prepares_nothing_and_loses_nothing(pgbouncer):
    for name in ("first", "second", "third"):
        done = client(pgbouncer, name, 20)
        assert done.returncode == 0, done.stderr
    assert {(p["via"], p["n"]) for p in Job.objects.values_list("payload", flat=True)} == {
        (name, n) for name in ("first", "second", "third") for n in range(20)
    }


def test_a_prepared_insert_breaks_behind_a_transaction_pooler(pgbouncer):
    """The hazard the default avoids: with preparation forced on, the second client's INSERT
    collides with the statement the first client left prepared on the shared server connection."""
    assert client(pgbouncer, "first", 1, prepare=True).returncode == 0
    done = client(pgbouncer, "second", 1, prepare=True)
    assert done.returncode != 0
    assert "prepared statement" in done.stderr and "already exists" in done.stderr
    assert [p["via"] for p in Job.objects.values_list("payload", flat=True)] == ["first"]


def test_a_worker_behind_the_pooler_polls_says_so_and_runs_every_job_once(pgbouncer, workers):
    worker = workers("--poll-interval", "0.2", "--concurrency", "2", database_url=pooled_url(pgbouncer))
    assert (
        "wakeup=poll every 0.2s (no LISTEN through the pooler of 'default', which sets DISABLE_SERVER_SIDE_CURSORS"
    ) in worker.output()

    done = client(pgbouncer, "first", 30)

    assert done.returncode == 0, done.stderr
    wait_for(
        lambda: Job.objects.filter(status=Status.SUCCEEDED).count() == 30,
        timeout=30,
        message=lambda: f"30 jobs to succeed:\n{worker.output()}",
    )
    assert sorted(JobExecution.objects.values_list("attempt", "outcome")) == [(1, Outcome.SUCCEEDED)] * 30
