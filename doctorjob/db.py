"""The psycopg plumbing that enqueue() and the worker share: server-side binding, statements
prepared once per connection, the jsonb loader, pooler detection, and the database's clock.

Importing it loads nothing that claims, renews or finishes jobs.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .conf import settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


def execute(
    connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], *, prepare: bool = False, planner: str = ""
) -> Any:
    """Run one of the hot PostgreSQL statements with server-side binding: arrays travel as
    binary parameters instead of being quoted into the SQL text by Django's client-side cursor.
    With ``prepare`` the statement is parsed and planned once per connection (see
    ``may_prepare``). ``planner`` is a statement of ``set_config(name, value, true)`` calls
    for this statement only; it is left out inside ``atomic()`` (it would last until the block
    ends) and with a libpq older than 14 (no pipeline). Returns the rows, or the row count for
    a statement that returns none. Errors surface as Django's database exceptions, inside or
    outside ``atomic()``."""
    import psycopg  # only PostgreSQL installs have it

    connection.ensure_connection()
    started = time.monotonic()
    pg = connection.connection
    try:
        prepare = prepare and may_prepare(connection)
        # Django sets psycopg's prepare_threshold to None, which turns preparation off for the
        # whole connection. Lift it for this one statement: the application's own queries are
        # still never prepared, and psycopg keeps its bookkeeping (a rollback deallocates).
        lift = prepare and pg.prepare_threshold is None
        # One psycopg cursor per connection, kept: making one costs more than running a
        # prepared INSERT's Python side.
        cursor = getattr(connection, "_doctorjob_cursor", None)
        if cursor is None or cursor.connection is not pg:
            cursor = connection._doctorjob_cursor = psycopg.Cursor(pg)  # type: ignore[attr-defined]
            cursor.adapters.register_loader("jsonb", _jsonb_loader())
        with connection.wrap_database_errors:
            if lift:
                pg.prepare_threshold = sys.maxsize
            try:  # binary results: no timestamp text parsing
                if planner and not connection.in_atomic_block and psycopg.Pipeline.is_supported():
                    # Both statements before one Sync: one round trip and one implicit
                    # transaction, which the planner settings (set_config(..., true)) last for.
                    with pg.pipeline():
                        cursor.execute(planner)
                        cursor.execute(sql, params, binary=True, prepare=prepare or None)
                        return cursor.fetchall()
                cursor.execute(sql, params, binary=True, prepare=prepare or None)
            finally:
                if lift:
                    pg.prepare_threshold = None
            return cursor.fetchall() if cursor.pgresult and cursor.pgresult.nfields else cursor.rowcount
    finally:
        if connection.queries_logged:  # DEBUG, debug toolbars, CaptureQueriesContext see it too
            connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})


@functools.cache
def _jsonb_loader() -> type:
    """A loader for jsonb in binary, for every payload a worker claims: a version byte, then the
    document as PostgreSQL prints it, in the client encoding (UTF-8: Django sets it) and with
    nothing around it, so it is parsed as it comes. psycopg's default, ``json.loads(bytes)``,
    first sniffs the encoding and then checks for surrounding whitespace, which made loading a
    small payload four times as costly. It serves doctorjob's own cursor only: Django's cursors
    keep psycopg's loaders, and a ``psycopg.types.json.set_json_loads()`` does not reach it."""
    from psycopg import DataError
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    decode = json.JSONDecoder().raw_decode

    class JsonbLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> Any:
            if data[0] != 1:
                raise DataError(f"unknown jsonb binary format: {data[0]}")
            return decode(str(data[1:], "utf-8"))[0]

    return JsonbLoader


def behind_pooler(connection: BaseDatabaseWrapper) -> bool:
    """Whether the database is reached through a transaction pooler (PgBouncer in transaction
    mode), as Django is told with DISABLE_SERVER_SIDE_CURSORS: session state, such as a prepared
    statement or a LISTEN, then lasts one transaction on whichever server connection ran it."""
    return bool(connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"))


def may_prepare(connection: BaseDatabaseWrapper) -> bool:
    """Whether doctorjob may keep prepared statements on this PostgreSQL connection:
    DOCTORJOB["PREPARE"], by default yes unless it is behind a transaction pooler."""
    return not behind_pooler(connection) if settings.PREPARE is None else settings.PREPARE


def missing_table(exc: BaseException) -> bool:
    """Whether a database error says that one of doctorjob's tables does not exist (PostgreSQL,
    SQLite and MySQL/MariaDB word it differently)."""
    text = str(exc)
    return "doctorjob_" in text and any(words in text for words in ("does not exist", "no such table", "doesn't exist"))


def not_migrated(alias: str) -> str:
    return (
        f"doctorjob's tables are missing from database '{alias}': run `python manage.py migrate` "
        f"(with --database {alias} if it is not the default)"
    )


def close_quietly(alias: str) -> None:
    """Close this thread's connection to ``alias`` after a database error, whatever state it is
    in: the next query reconnects."""
    from django.db import DatabaseError, connections

    try:
        connections[alias].close()
    except DatabaseError:
        pass


def database_now(connection: BaseDatabaseWrapper) -> datetime:
    """The database server's time, the one clock every worker and host compares against (due
    times, leases, retention), so that a host whose own clock drifts decides nothing early or
    late. SQLite is a file on one host: its clock is that host's."""
    from django.conf import settings as django_settings
    from django.utils import timezone

    if connection.vendor == "sqlite":
        return timezone.now()
    sql = "SELECT statement_timestamp()" if connection.vendor == "postgresql" else "SELECT UTC_TIMESTAMP(6)"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        now = cursor.fetchone()[0]
    if timezone.is_naive(now):
        now = now.replace(tzinfo=UTC)
    # As timezone.now() gives it: aware in UTC with USE_TZ, naive local time without.
    return now if django_settings.USE_TZ else timezone.make_naive(now)


@contextmanager
def writing(alias: str) -> Iterator[None]:
    """``transaction.atomic()`` for a transaction that reads what it then changes.

    On SQLite its first statement is a write, which waits (Django's ``timeout``) for the
    database's write lock: a transaction that has read cannot wait for it, and fails at once
    with "database is locked" while a worker writes. Elsewhere ``select_for_update()`` locks
    the rows read, as usual."""
    from django.db import connections, transaction

    with transaction.atomic(using=alias):
        connection = connections[alias]
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("UPDATE doctorjob_maintenancelease SET holder = holder WHERE 0")
        yield
