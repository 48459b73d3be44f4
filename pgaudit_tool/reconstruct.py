"""Point-in-time reconstruction, diffs and blame (thin wrappers over the SQL functions).

"The state at T" is what every transaction committed at or before T produced; see
``sql/v0001/05_reconstruct.sql`` for how the past is rebuilt and what it contains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from pgaudit_tool.db import TableRef, load_json, stream, translated_errors
from pgaudit_tool.errors import InvalidInput

DIFF_COLUMNS = ("pk", "change", "changed", "before", "after")
BLAME_COLUMNS = (
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
    """The key as the log stores it, typed (``audit.pk``): ``7``, ``'{"id": "7"}'`` -> ``{"id": 7}``."""
    text = json.dumps(key) if isinstance(key, dict) else str(key)
    with translated_errors(), conn.cursor() as cur:
        set_json_loads(load_json, cur)
        row = cur.execute("SELECT audit.pk(%s::oid::regclass, %s)", (table.oid, text)).fetchone()
    assert row is not None
    return row[0]


def row_at(conn: psycopg.Connection[Any], table: TableRef, pk: Any, at: datetime) -> Any:
    """The row with key ``pk`` as it was at ``at`` (a dict), or None if it did not exist."""
    with translated_errors(), conn.cursor() as cur:
        set_json_loads(load_json, cur)
        row = cur.execute(
            "SELECT audit.row_at(%s::oid::regclass, %s, %s)", (table.oid, Jsonb(pk), at)
        ).fetchone()
    assert row is not None
    return row[0]


def table_at(
    conn: psycopg.Connection[Any], table: TableRef, at: datetime
) -> Iterator[dict[str, Any]]:
    """Every row of the table as it was at ``at``, with its column types, streamed."""
    query = sql.SQL("SELECT * FROM audit.table_at(NULL::{}, %s)").format(table.ident)
    return stream(conn, "pgaudit_table_at", query, (at,))


def table_at_into(conn: psycopg.Connection[Any], table: TableRef, at: datetime, target: str) -> int:
    """Materialize the table as it was at ``at`` as a new table ``target``; returns its row count.

    The new table has the original column types (no constraints, indexes or defaults). An
    existing ``target`` is an error: nothing is overwritten.
    """
    with translated_errors(), conn.transaction():
        parts = _parse_qualified(conn, target)
        if conn.execute("SELECT to_regclass(%s)", (target,)).fetchone() != (None,):
            raise InvalidInput(
                f"{target} already exists", hint="Name a new table; nothing is overwritten."
            )
        cur = conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM audit.table_at(NULL::{}, %s)").format(
                sql.Identifier(*parts), table.ident
            ),
            (at,),
        )
        return cur.rowcount


def _parse_qualified(conn: psycopg.Connection[Any], name: str) -> list[str]:
    try:
        with conn.transaction():
            row = conn.execute("SELECT parse_ident(%s)", (name,)).fetchone()
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
    return stream(
        conn,
        "pgaudit_diff",
        "SELECT pk, change, changed, before, after FROM audit.diff(%s::oid::regclass, %s, %s)",
        (table.oid, since, until),
    )


def blame(conn: psycopg.Connection[Any], table: TableRef, pk: Any) -> list[dict[str, Any]]:
    """Who last set each column of the row, and when (``audit.blame``)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        set_json_loads(load_json, cur)
        cur.execute(
            "SELECT column_name, value, change_id, op, at, txid::text::bigint AS txid, actor, db_user, role"
            " FROM audit.blame(%s::oid::regclass, %s)",
            (table.oid, Jsonb(pk)),
        )
        return cur.fetchall()
