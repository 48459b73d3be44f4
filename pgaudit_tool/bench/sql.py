"""The SQL text of the bench: table definitions and the statements it times."""

from __future__ import annotations

from psycopg import sql

# 8 columns of mixed types; autovacuum off because the bench vacuums after each statement.
TABLE_DDL = """CREATE TABLE {} (
    id         bigint PRIMARY KEY,
    qty        integer NOT NULL,
    label      text NOT NULL,
    amount     numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL,
    active     boolean NOT NULL,
    attrs      jsonb NOT NULL,
    ref        uuid NOT NULL
) WITH (autovacuum_enabled = off)"""

BARE_LOG_DDL = "CREATE TABLE {} (old jsonb, new jsonb) WITH (autovacuum_enabled = off)"

_BULK_SQL = {
    "insert": "INSERT INTO {table} SELECT i, i % 1000, 'item ' || i, (i % 100000) / 100.0,"
    " timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second', i % 2 = 0,"
    " jsonb_build_object('kind', i % 10, 'tag', 'tag' || (i % 7)), md5(i::text)::uuid"
    " FROM generate_series({first}, {last}) AS i",
    "update": "UPDATE {table} SET qty = qty + 1, amount = amount + 1",
    "delete": "DELETE FROM {table}",
}

# The least a JSONB change log must write: the images of the rows, into a bare table.
_BARE_LOG_SQL = {
    "insert": "INSERT INTO {log} (new) SELECT to_jsonb(t) FROM {table} AS t",
    "update": "INSERT INTO {log} (old, new) SELECT to_jsonb(t), to_jsonb(t) FROM {table} AS t",
    "delete": "INSERT INTO {log} (old) SELECT to_jsonb(t) FROM {table} AS t",
}


def bulk_sql(op: str, table: sql.Identifier, rows: int) -> sql.Composed:
    return sql.SQL(_BULK_SQL[op]).format(table=table, first=sql.Literal(1), last=sql.Literal(rows))


def insert_range_sql(table: sql.Identifier, first: int, last: int) -> sql.Composed:
    """INSERT of the rows with ids first..last (the same values as the bulk INSERT)."""
    return sql.SQL(_BULK_SQL["insert"]).format(
        table=table, first=sql.Literal(first), last=sql.Literal(last)
    )


def history_update_sql(table: sql.Identifier, low: int, high: int) -> sql.Composed:
    return sql.SQL(
        "UPDATE {} SET qty = qty + 1, amount = amount + 1 WHERE id BETWEEN {} AND {}"
    ).format(table, sql.Literal(low), sql.Literal(high))


def history_delete_sql(table: sql.Identifier, low: int, high: int) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id BETWEEN {} AND {} AND id % 50 = 0").format(
        table, sql.Literal(low), sql.Literal(high)
    )


def bare_log_sql(op: str, log: sql.Identifier, table: sql.Identifier) -> sql.Composed:
    return sql.SQL(_BARE_LOG_SQL[op]).format(log=log, table=table)


def single_update_sql(table: sql.Identifier, key: str = "%s") -> sql.Composed:
    """UPDATE of one row by id; ``key``: the placeholder (``%s``, or ``:id`` for pgbench)."""
    return sql.SQL("UPDATE {} SET qty = qty + 1, amount = amount + 1 WHERE id = {}").format(
        table, sql.SQL(key)
    )
