"""Idempotency keys compare byte for byte on MariaDB and MySQL too.

Their default collations fold case and accents and ignore trailing spaces, so 'Key', 'key',
'kéy' and 'key ' were one key there (the second job never written, its caller handed the
other's). A binary collation with NO PAD makes them four, as on PostgreSQL and SQLite:
``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8 (``utf8mb4_bin`` still
ignores trailing spaces). Other databases: nothing to do.
"""

from typing import Any

from django.db import migrations

COLUMNS = [("doctorjob_job", "key"), ("doctorjob_deadletter", "key")]


def binary_keys(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    collation = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
    for table, column in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE {schema_editor.quote_name(table)} MODIFY {schema_editor.quote_name(column)} "
            f"varchar(255) CHARACTER SET utf8mb4 COLLATE {collation} NULL"
        )


def folded_keys(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    for table, column in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE {schema_editor.quote_name(table)} MODIFY {schema_editor.quote_name(column)} "
            f"varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NULL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("doctorjob", "0004_lifecycle"),
    ]

    operations = [
        migrations.RunPython(binary_keys, folded_keys, atomic=False),
    ]
