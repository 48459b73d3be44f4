"""Enable, disable, refresh and inspect capture on tables (thin wrappers over the SQL API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row

from pgaudit_tool.db import (
    TableRef,
    resolve_table,
    schema_tables,
    translated_errors,
    write_transaction,
)
from pgaudit_tool.errors import InvalidInput, TableNotSuitable
from pgaudit_tool.results import TableStatus

STATUS_COLUMNS = (
    "table",
    "state",
    "enabled",
    "key_source",
    "key_columns",
    "excluded_columns",
    "capture_truncate",
    "partitions",
    "triggers_expected",
    "triggers_present",
    "triggers_always",
    "history_since",
    "enabled_at",
    "disabled_at",
)


def tables_to_audit(
    conn: psycopg.Connection[Any], names: Sequence[str], schemas: Sequence[str] = ()
) -> list[TableRef]:
    """Resolve table names and every table of the given schemas, without duplicates."""
    refs: dict[int, TableRef] = {}
    for name in names:
        ref = resolve_table(conn, name)
        refs.setdefault(ref.oid, ref)
    for schema in schemas:
        for ref in schema_tables(conn, schema):
            refs.setdefault(ref.oid, ref)
    if not refs:
        raise InvalidInput("no table given", hint="Name tables, or use --schema SCHEMA.")
    return list(refs.values())


def unsuitable_tables(conn: psycopg.Connection[Any], refs: Sequence[TableRef]) -> dict[str, str]:
    """Tables among ``refs`` that cannot be audited, with the reason for each."""
    problems: dict[str, str] = {}
    for ref in refs:
        try:
            with conn.transaction(), translated_errors():
                conn.execute("SELECT audit._check_auditable(%s::oid::regclass)", (ref.oid,))
                conn.execute("SELECT audit._key_of(%s::oid::regclass)", (ref.oid,))
        except TableNotSuitable as exc:
            problems[ref.name] = exc.message
    return problems


def enable(
    conn: psycopg.Connection[Any],
    refs: Sequence[TableRef],
    *,
    exclude: Sequence[str] | None = None,
    capture_truncate: bool | None = None,
    schemas: Sequence[str] = (),
    progress: Callable[[int, int, str], None] | None = None,
) -> list[TableStatus]:
    """Enable capture on every table, in one transaction (all or nothing).

    ``exclude`` names columns never stored (None keeps each table's current list; a name
    missing from a table is an error). ``capture_truncate`` None keeps the current setting.
    ``progress(done, total, table)``: called before each table, and with ``done`` at the end.
    """
    with write_transaction(conn), translated_errors():
        for schema in schemas:
            conn.execute("SELECT audit.track_schema(%s)", (schema,))
        for n, ref in enumerate(refs):
            if progress is not None:
                progress(n, len(refs), ref.name)
            conn.execute(
                "SELECT audit.enable(%s::oid::regclass, %s::text[], %s)",
                (ref.oid, None if exclude is None else list(exclude), capture_truncate),
            )
        if progress is not None:
            progress(len(refs), len(refs), "done")
    return [row for row in status(conn) if row["relid"] in {r.oid for r in refs}]


def disable(
    conn: psycopg.Connection[Any], refs: Sequence[TableRef], schemas: Sequence[str] = ()
) -> dict[str, bool]:
    """Disable capture on every table, in one transaction. History stays.

    Returns, per table, whether it was being audited.
    """
    result: dict[str, bool] = {}
    with write_transaction(conn), translated_errors():
        for schema in schemas:
            conn.execute("DELETE FROM audit.tracked_schema WHERE schema_name = %s", (schema,))
        for ref in refs:
            row = conn.execute("SELECT audit.disable(%s::oid::regclass)", (ref.oid,)).fetchone()
            result[ref.name] = bool(row and row[0])
    return result


def refresh(conn: psycopg.Connection[Any], refs: Sequence[TableRef]) -> None:
    """Regenerate capture of audited tables after DDL, in one transaction."""
    with write_transaction(conn), translated_errors():
        for ref in refs:
            conn.execute("SELECT audit.refresh(%s::oid::regclass)", (ref.oid,))


def status(conn: psycopg.Connection[Any]) -> list[TableStatus]:
    """One record per registered table (see ``audit.status()``)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM audit.status()")
        rows = cur.fetchall()
    for row in rows:
        row["table"] = row.pop("table_name")
    return cast("list[TableStatus]", rows)
