"""Point-in-time reconstruction, diffs and blame (thin wrappers over the SQL functions).

"The state at T" is what every transaction committed at or before T produced; see
``sql/functions/04_reconstruct.sql`` for how the past is rebuilt and what it contains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from pgaudit_tool.db import (
    TableRef,
    changing_transaction,
    jsonb,
    load_json,
    stream,
    translated_errors,
)
from pgaudit_tool.errors import DatabaseError, InvalidInput
from pgaudit_tool.export import ROW_TO_JSON, export

DIFF_COLUMNS = ("pk", "change", "changed", "before", "after")
BLAME_COLUMNS = (
    "pk",
    "column_name",
    "value",
    "change_id",
    "op",
    "at",
    "txid",
    "actor",
    "db_user",
    "role",
)


def normalize_pk(
    conn: psycopg.Connection[Any], table: TableRef, key: str | int | dict[str, Any]
) -> Any:
    """The key as the log stores it, typed (``audit.pk``): ``7``, ``'{"id": "7"}'`` -> ``{"id": 7}``.

    A value the server cannot convert to the key column's type (out of range, malformed, too
    deeply nested) raises InvalidInput.
    """
    return _normalized(conn, table, key, part=False)[0]


def normalize_key_part(
    conn: psycopg.Connection[Any], table: TableRef, key: str | int | dict[str, Any]
) -> tuple[Any, bool]:
    """As :func:`normalize_pk`, but the key may name only some of its columns (a bare value is
    the first one): the key with those columns, and whether they are all of the key's."""
    pk, columns = _normalized(conn, table, key, part=True)
    return pk, len(pk) == columns


def _normalized(
    conn: psycopg.Connection[Any], table: TableRef, key: str | int | dict[str, Any], *, part: bool
) -> tuple[Any, int]:
    """``audit.pk`` of the key, and how many columns the table's key has (one round trip)."""
    text = json.dumps(key) if isinstance(key, dict) else str(key)
    try:
        with translated_errors(), conn.cursor() as cur:
            set_json_loads(load_json, cur)
            row = cur.execute(
                "SELECT audit.pk(%s::oid::regclass, %s, %s),"
                " pg_catalog.cardinality(audit._key_columns(%s::oid::regclass))",
                (table.oid, text, part, table.oid),
            ).fetchone()
    except DatabaseError as exc:
        cause = exc.__cause__
        if not isinstance(cause, psycopg.DataError | psycopg.errors.ProgramLimitExceeded):
            raise
        reason = _cut(cause.diag.message_primary or str(cause), 200)
        raise InvalidInput(
            f"{_cut(text, 60)!r} is not a key of {table.name}: {reason}",
            hint="Give a value of the key column's type, or a JSON object of the key columns.",
        ) from exc
    assert row is not None
    return row[0], int(row[1])


def live_keys(conn: psycopg.Connection[Any], table: TableRef, part: Any) -> list[Any]:
    """The keys of the table's rows now that have ``part`` (a part of the key), in order."""
    with translated_errors(), conn.cursor() as cur:
        set_json_loads(load_json, cur)
        rows = cur.execute(
            "SELECT audit._live_keys(%s::oid::regclass, %s)", (table.oid, jsonb(part))
        ).fetchall()
    return [r[0] for r in rows]


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def row_at(conn: psycopg.Connection[Any], table: TableRef, pk: Any, at: datetime) -> Any:
    """The row with key ``pk`` as it was at ``at`` (a dict), or None if it did not exist."""
    with translated_errors(), conn.cursor() as cur:
        set_json_loads(load_json, cur)
        row = cur.execute(
            "SELECT audit.row_at(%s::oid::regclass, %s, %s)", (table.oid, jsonb(pk), at)
        ).fetchone()
    assert row is not None
    return row[0]


def table_at(
    conn: psycopg.Connection[Any], table: TableRef, at: datetime
) -> Iterator[dict[str, Any]]:
    """Every row of the table as it was at ``at``, with its column types, streamed."""
    # The instant is a literal, not a parameter: psycopg would read a "%" in a composed name
    # as a placeholder when parameters are passed.
    query = sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {}) AS r ORDER BY {}").format(
        table.ident, sql.Literal(at), _key_order(conn, table, sql.SQL("r"))
    )
    return stream(conn, "pgaudit_table_at", query)


def export_table_at(
    conn: psycopg.Connection[Any], table: TableRef, at: datetime, fmt: str, out: BinaryIO
) -> None:
    """Write the table as it was at ``at``, in key order, as csv, json or jsonl text rendered
    by the server (:mod:`pgaudit_tool.export`)."""
    query = sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {})").format(
        table.ident, sql.Literal(at)
    )
    with translated_errors():
        # No cast to json a table owner wrote may run: row_to_json only when every type is safe.
        row = conn.execute(
            "SELECT audit._image_sql('x', %s::oid, '{}') WHERE NOT audit._all_safe(%s::oid)",
            (table.oid, table.oid),
        ).fetchone()
    json_row = ROW_TO_JSON if row is None else sql.SQL(row[0])  # generated, every name quoted
    export(conn, query, _key_order(conn, table, sql.SQL("x")), fmt, out, json_row)


def _key_order(
    conn: psycopg.Connection[Any], table: TableRef, row: sql.Composable
) -> sql.Composable:
    """The key columns of ``row`` (a row of ``table``), for ORDER BY: output in key order, so
    that two listings compare line by line (``true`` when the key is unknown)."""
    with translated_errors():
        found = conn.execute(
            "SELECT audit._key_columns(%s::oid::regclass)", (table.oid,)
        ).fetchone()
    names = [n for n in (found[0] if found else None) or [] if n is not None]
    if not names:
        return sql.SQL("true")
    return sql.SQL(", ").join(sql.SQL("({}).{}").format(row, sql.Identifier(n)) for n in names)


def table_at_into(conn: psycopg.Connection[Any], table: TableRef, at: datetime, target: str) -> int:
    """Materialize the table as it was at ``at`` as a new table ``target``; returns its row count.

    The new table has the original column types (no constraints, indexes or defaults). An
    existing ``target``, or one in the audit schema or a system schema, is an error: nothing is
    overwritten or created.
    """
    with translated_errors(), changing_transaction(conn):
        parts = _parse_qualified(conn, target)
        _refuse_reserved_schema(conn, parts, target)
        if conn.execute("SELECT pg_catalog.to_regclass(%s)", (target,)).fetchone() != (None,):
            raise InvalidInput(
                f"{target} already exists", hint="Name a new table; nothing is overwritten."
            )
        cur = conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM audit.table_at(NULL::{}, {})").format(
                sql.Identifier(*parts), table.ident, sql.Literal(at)
            )
        )
        return cur.rowcount


#: Schemas --into never creates a table in: the log's own, and the system's.
RESERVED_SCHEMAS = ("audit", "pg_catalog", "information_schema")


def _refuse_reserved_schema(conn: psycopg.Connection[Any], parts: list[str], target: str) -> None:
    """InvalidInput when the new table would go into the audit schema or a system schema
    (``pg_toast`` and every other ``pg_`` schema but the session's temporary one)."""
    if len(parts) == 2:
        schema = parts[0]
    else:  # where CREATE TABLE puts an unqualified name: the first schema of the search_path
        row = conn.execute("SELECT pg_catalog.current_schema()").fetchone()
        schema = "" if row is None or row[0] is None else str(row[0])
    temporary = schema == "pg_temp" or schema.startswith("pg_temp_")
    if schema in RESERVED_SCHEMAS or (schema.startswith("pg_") and not temporary):
        raise InvalidInput(
            f"refusing to create {target} in schema {schema!r}: it belongs to"
            f" {'the audit log' if schema == 'audit' else 'the system'}; nothing was created",
            hint="Name a table in one of your own schemas: --into SCHEMA.TABLE.",
        )


def _parse_qualified(conn: psycopg.Connection[Any], name: str) -> list[str]:
    try:
        with conn.transaction():
            row = conn.execute("SELECT pg_catalog.parse_ident(%s)", (name,)).fetchone()
    except psycopg.Error as exc:
        raise InvalidInput(
            f"{name!r} is not a valid table name: {exc.diag.message_primary}"
        ) from exc
    parts = list(row[0]) if row else []
    if not 1 <= len(parts) <= 2:
        raise InvalidInput(f"{name!r} is not a valid table name", hint="Use SCHEMA.TABLE.")
    return parts


def diff(
    conn: psycopg.Connection[Any], table: TableRef, since: datetime, until: datetime
) -> Iterator[dict[str, Any]]:
    """Net change per row between two instants (``audit.diff``), streamed."""
    query = sql.SQL(
        "SELECT d.pk, d.change, d.changed, d.before, d.after"
        " FROM audit.diff({}::oid::regclass, {}, {}) AS d{} ORDER BY {}"
    ).format(
        sql.Literal(table.oid), sql.Literal(since), sql.Literal(until), *_diff_order(conn, table)
    )
    return stream(conn, "pgaudit_diff", query)


def _diff_order(
    conn: psycopg.Connection[Any], table: TableRef
) -> tuple[sql.Composable, sql.Composable]:
    """The FROM item and ORDER BY list sorting diff's rows in key order, as table-at's: the JSON
    key read as the key's types (audit._read_type: no code of the table's owner runs); a key
    that cannot be read so, as JSON."""
    with translated_errors():
        row = conn.execute(
            "SELECT k, audit._key_record_sql(%s::oid::regclass, k, 'd.pk', 'k')"
            " FROM audit._key_columns(%s::oid::regclass) AS k"
            " WHERE audit._keys_readable(%s::oid::regclass, k)",
            (table.oid, table.oid, table.oid),
        ).fetchone()
    if row is None:
        return sql.SQL(""), sql.SQL("d.pk")
    keys, from_item = row
    order = sql.SQL(", ").join(sql.SQL("k.{}").format(sql.Identifier(k)) for k in keys)
    # The FROM item is generated by the server with every name quoted (format's %I).
    return sql.SQL(", ") + sql.SQL(from_item), order


def blame(conn: psycopg.Connection[Any], table: TableRef, pk: Any) -> list[dict[str, Any]]:
    """Who last set each column of the row, and when (``audit.blame``)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        set_json_loads(load_json, cur)
        cur.execute(
            "SELECT %s::jsonb AS pk, column_name, value, change_id, op, at, txid::text::bigint AS txid,"
            " actor, db_user, role FROM audit.blame(%s::oid::regclass, %s)",
            (jsonb(pk), table.oid, jsonb(pk)),
        )
        return cur.fetchall()
