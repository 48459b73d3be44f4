"""Removal of the scratch schema and of every audit row its tables produced."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool import schema
from pgaudit_tool.bench.config import Progress, scratch_schemas
from pgaudit_tool.connection import connect
from pgaudit_tool.errors import AuditError


def cleanup(conninfo: str, scratch: str, progress: Progress, quiet: bool = False) -> None:
    """Remove the scratch schema, the large TPC-B series' schema (see
    :func:`~pgaudit_tool.bench.config.scratch_schemas`) and every audit row of their tables.

    With ``quiet`` (the bench already failed) a failure here is reported through
    ``progress`` instead of replacing the original error.
    """
    schemas = scratch_schemas(scratch)
    progress(f"bench: removing {scratch} and its audit rows")
    try:
        with connect(conninfo) as conn:
            for name in schemas:
                with conn.transaction():
                    remove_scratch(conn, name)
    except (AuditError, psycopg.Error) as exc:
        if not quiet:
            dropped = ", ".join(schemas)
            raise AuditError(
                f"bench: could not remove the scratch schema {scratch}: {exc}",
                hint=f"Disable audit on the tables of {dropped}, delete their audit rows and DROP SCHEMA {dropped} CASCADE.",
            ) from exc
        progress(f"bench: could not remove the scratch schema {scratch}: {exc}")


def remove_scratch(conn: psycopg.Connection[Any], scratch: str) -> None:
    """Disable capture on the tables of ``scratch``, delete their audit rows, drop the schema."""
    relids = _scratch_relids(conn, scratch)
    if relids:
        for relid in relids:
            conn.execute(
                "SELECT audit.disable(%s::oid::regclass) FROM pg_class WHERE oid = %s",
                (relid, relid),
            )
        _delete_audit_rows(conn, relids)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))


def _scratch_relids(conn: psycopg.Connection[Any], scratch: str) -> list[int]:
    """Tables of the scratch schema, and any registered under its name (dropped since)."""
    rows = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p')"
        " UNION SELECT relid FROM audit.tracked_table WHERE schema_name = %(s)s",
        {"s": scratch},
    ).fetchall()
    return [int(r[0]) for r in rows]


def _delete_audit_rows(conn: psycopg.Connection[Any], relids: list[int]) -> None:
    """Delete the audit rows of ``relids``: changes first, the registry last, then the
    transactions left without any change."""
    conn.execute(
        "CREATE TEMP TABLE pgaudit_bench_txids ON COMMIT DROP AS"
        " SELECT DISTINCT txid FROM audit.change WHERE relid = ANY(%s)",
        (relids,),
    )
    # Alerts the bench's watchers raised, and their cursors.
    conn.execute(
        "DELETE FROM audit.alert AS a WHERE a.relid = ANY(%s) OR EXISTS (SELECT FROM"
        " pgaudit_bench_txids AS b WHERE b.txid = ANY (a.txids))",
        (relids,),
    )
    conn.execute("DELETE FROM audit.watch_cursor WHERE name LIKE 'bench %%'")
    for table in _relid_tables(conn):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE relid = ANY(%s)").format(
                sql.Identifier(schema.SCHEMA, table)
            ),
            (relids,),
        )
    conn.execute(
        "DELETE FROM audit.transaction t USING pgaudit_bench_txids b WHERE t.txid = b.txid"
        " AND NOT EXISTS (SELECT FROM audit.change c WHERE c.txid = t.txid)"
    )


def _relid_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables of the audit schema keyed by table OID (``relid``): change first, registry last."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'relid' AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY c.relname = 'change' DESC, c.relname = 'tracked_table', c.relname",
        (schema.SCHEMA,),
    ).fetchall()
    return [str(r[0]) for r in rows]
