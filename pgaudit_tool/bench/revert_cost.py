"""What a revert costs: a revert of N changed rows timed against the UPDATE that changed them
(``revert_ratio`` of :func:`pgaudit_tool.bench.run_bench`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool.bench.cleanup import remove_scratch
from pgaudit_tool.connection import connect
from pgaudit_tool.revert import RevertSelection, run


def bench_revert(conninfo: str, rows: int = 100_000) -> dict[str, Any]:
    """Time a revert of ``rows`` changed rows against the UPDATE that changed them.

    In a scratch schema (removed afterwards, with its audit rows): an audited 8-column table of
    ``rows`` rows, one ``UPDATE`` of every row (timed, autocommit), then the revert of that
    transaction (timed: planning, conflict check and the UPDATE back, all captured). Needs the
    audit schema installed and the rights of the bench (see :mod:`pgaudit_tool.bench`).
    """
    scratch = f"pgaudit_revert_bench_{uuid.uuid4().hex[:8]}"
    table = sql.Identifier(scratch, "t")
    with connect(conninfo) as conn:
        try:
            _bench_table(conn, scratch, table, rows)
            started = time.perf_counter()
            conn.execute(sql.SQL("UPDATE {} SET qty = qty + 1, note = note || 'x'").format(table))
            update_s = time.perf_counter() - started
            found = conn.execute("SELECT max(txid)::text FROM audit.change").fetchone()
            assert found is not None
            conn.execute("VACUUM ANALYZE audit.change")
            started = time.perf_counter()
            result = run(conn, RevertSelection(txids=(int(found[0]),)))
            revert_s = time.perf_counter() - started
        finally:
            with conn.transaction():
                remove_scratch(conn, scratch)
    return {
        "rows": rows,
        "update_ms": round(update_s * 1000, 1),
        "revert_ms": round(revert_s * 1000, 1),
        "ratio": round(revert_s / update_s, 2),
        "reverted_rows": result.applied_rows,
    }


def _bench_table(
    conn: psycopg.Connection[Any], scratch: str, table: sql.Identifier, rows: int
) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY, customer text, qty int, price numeric(12, 2),"
            " created timestamptz, note text, flag boolean, code bigint)"
        ).format(table)
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'customer ' || g, g %% 100, g * 1.5, now(), md5(g::text),"
            " g %% 2 = 0, g * 7 FROM generate_series(1, %s) AS g"
        ).format(table),
        (rows,),
    )
    conn.execute("SELECT audit.enable(%s::regclass)", (f"{scratch}.t",))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
