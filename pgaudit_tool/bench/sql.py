"""The SQL text of the bench: table definitions and the statements it times."""

from __future__ import annotations

from collections.abc import Callable

from psycopg import sql

from pgaudit_tool.bench.config import BARE_LOG

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

# The same for one statement: the row's images, read and logged by the statement that writes it
# (every CTE sees the snapshot before the UPDATE: ``o`` the old row, RETURNING the new one).
_LOGGED_UPDATE = (
    "WITH o AS (SELECT to_jsonb(t) AS j FROM {table} AS t WHERE {key} = {value}),"
    " u AS (UPDATE {table} AS t SET {changes} WHERE {key} = {value} RETURNING to_jsonb(t) AS j)"
    " INSERT INTO {log} (old, new) SELECT o.j, u.j FROM o, u"
)
_LOGGED_INSERT = (
    "WITH i AS (INSERT INTO {table} AS t {values} RETURNING to_jsonb(t) AS j)"
    " INSERT INTO {log} (new) SELECT i.j FROM i"
)
_SINGLE_UPDATE_SET = "qty = qty + 1, amount = amount + 1"

# pgbench's built-in TPC-B-like script (``pgbench --show-script=tpcb-like``), each write of it
# also logging its images; its ``\set`` lines need ``-s`` (pgbench sets ``:scale`` itself only
# for built-in scripts).
TPCB_SET_LINES = (
    "\\set aid random(1, 100000 * :scale)",
    "\\set bid random(1, 1 * :scale)",
    "\\set tid random(1, 10 * :scale)",
    "\\set delta random(-5000, 5000)",
)
_TPCB_HISTORY_VALUES = (
    "(tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP)"
)


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


def single_update_sql(table: sql.Identifier, key: str = "%(id)s") -> sql.Composed:
    """UPDATE of one row by id; ``key``: the placeholder (``%(id)s``, or ``:id`` for pgbench)."""
    return sql.SQL("UPDATE {} SET {} WHERE id = {}").format(
        table, sql.SQL(_SINGLE_UPDATE_SET), sql.SQL(key)
    )


def single_update_floor_sql(
    table: sql.Identifier, log: sql.Identifier, key: str = "%(id)s"
) -> sql.Composed:
    """:func:`single_update_sql` that also writes the row's old and new images into ``log``."""
    return logged_update_sql(table, log, _SINGLE_UPDATE_SET, "id", key)


def logged_update_sql(
    table: sql.Identifier, log: sql.Identifier, changes: str, key: str, value: str
) -> sql.Composed:
    """``UPDATE table SET changes WHERE key = value`` writing the old and new images of the row
    into ``log`` in the same statement."""
    return sql.SQL(_LOGGED_UPDATE).format(
        table=table,
        log=log,
        changes=sql.SQL(changes),
        key=sql.Identifier(key),
        value=sql.SQL(value),
    )


def tpcb_floor_statements(table: Callable[[str], sql.Identifier]) -> list[sql.Composable]:
    """The SQL of pgbench's TPC-B-like transaction (after :data:`TPCB_SET_LINES`), its writes
    logging their images into ``bare_log``; ``table``: the scratch schema's table of a name."""
    log = table(BARE_LOG)
    accounts = table("pgbench_accounts")
    return [
        sql.SQL("BEGIN"),
        logged_update_sql(accounts, log, "abalance = abalance + :delta", "aid", ":aid"),
        sql.SQL("SELECT abalance FROM {} WHERE aid = :aid").format(accounts),
        logged_update_sql(
            table("pgbench_tellers"), log, "tbalance = tbalance + :delta", "tid", ":tid"
        ),
        logged_update_sql(
            table("pgbench_branches"), log, "bbalance = bbalance + :delta", "bid", ":bid"
        ),
        sql.SQL(_LOGGED_INSERT).format(
            table=table("pgbench_history"), values=sql.SQL(_TPCB_HISTORY_VALUES), log=log
        ),
        sql.SQL("END"),
    ]
