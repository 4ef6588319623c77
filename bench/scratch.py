"""The scratch database the bench creates on the project's server and drops at the end."""

from __future__ import annotations

import copy
import zlib
from typing import Any

from .options import OLD_SCRATCH_MARKS, SCRATCH_ALIAS, SCRATCH_MARK, BenchmarkError

# -- the scratch database ------------------------------------------------------------------------


def add_scratch_alias(source: str, dbname: str) -> str:
    """Register SCRATCH_ALIAS: the ``source`` alias' settings (CONN_MAX_AGE included) on ``dbname``."""
    from django.db import connections

    settings_dict = copy.deepcopy(connections[source].settings_dict)
    settings_dict["NAME"] = dbname
    connections.settings[SCRATCH_ALIAS] = settings_dict  # the same dict as settings.DATABASES
    return SCRATCH_ALIAS


def libpq_params(alias: str) -> dict[str, Any]:
    """Connection keywords for a plain psycopg connection to ``alias``: Django's minus its adapters."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    return params


class ScratchDatabase:
    """A database of the bench's own next to ``source``'s, created, migrated and dropped by it."""

    def __init__(self, source: str) -> None:
        from django.db import connections

        self.source = source
        name = connections[source].settings_dict["NAME"] or "doctorjob"
        self.name = f"{name[:57]}_bench"  # PostgreSQL truncates identifiers at 63 bytes
        self.alias = SCRATCH_ALIAS
        self._admin: Any = None
        self._created = False  # drop() must never drop a database this run did not create

    def create(self) -> None:
        """Create and migrate the scratch database; refuse to reuse a database that is not ours."""
        import psycopg
        from django.core.management import call_command
        from psycopg import sql

        params = libpq_params(self.source)
        for maintenance_db in ("postgres", "template1"):
            try:
                self._admin = psycopg.connect(**{**params, "dbname": maintenance_db}, autocommit=True)
                break
            except psycopg.OperationalError as exc:
                error = exc
        else:
            raise BenchmarkError(f"cannot connect to the server of database alias '{self.source}': {error}")
        # One run at a time per scratch database: a second run would drop the first one's.
        lock = zlib.crc32(self.name.encode())
        if not self._admin.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()[0]:
            raise BenchmarkError(f"another bench run is using the scratch database '{self.name}'")
        mark = self._admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (self.name,)
        ).fetchone()
        if mark is not None and mark[0] not in (SCRATCH_MARK, *OLD_SCRATCH_MARKS):
            raise BenchmarkError(
                f"a database named '{self.name}' already exists and was not created by "
                "the bench; drop or rename it to run the benchmark"
            )
        ident = sql.Identifier(self.name)
        if mark is not None:  # left over by an interrupted run
            self._drop()
        try:
            self._admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        except psycopg.Error as exc:
            raise BenchmarkError(
                f"cannot create the scratch database '{self.name}' (the user needs CREATEDB): {exc}"
            ) from exc
        self._created = True
        self._admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(SCRATCH_MARK)))
        add_scratch_alias(self.source, self.name)
        call_command("migrate", database=self.alias, verbosity=0, interactive=False)
        from doctorjob.models import Job

        with psycopg.connect(**self.params, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass(%s)", (Job._meta.db_table,)).fetchone()[0]
        if found is None:
            raise BenchmarkError(
                f"migrate did not create doctorjob's tables in '{self.name}': does a "
                "database router keep doctorjob off new aliases?"
            )

    @property
    def params(self) -> dict[str, Any]:
        return libpq_params(self.alias)

    def drop(self) -> None:
        """Close every connection to the scratch database and drop it, if this run created it."""
        from django.db import connections

        if self.alias in connections:
            connections[self.alias].close()
            del connections.settings[self.alias]
        if self._admin is None:
            return
        try:
            if self._created:
                self._drop()
                self._created = False
        finally:
            self._admin.close()  # also releases the advisory lock
            self._admin = None

    def _drop(self) -> None:
        from psycopg import sql

        force = " WITH (FORCE)" if self._admin.info.server_version >= 130000 else ""
        self._admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(self.name)))
