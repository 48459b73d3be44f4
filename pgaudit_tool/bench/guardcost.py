"""What a guard (``audit.guard``) costs per statement, and that tables without one pay nothing.

:func:`guard_cost` works in a scratch schema ``pgaudit_guardcost_<random>``, removed at the end
(with the guards and the audit rows its tables produced) also after an error: three identical
audited tables ``a``, ``b`` and ``never`` (``id int PRIMARY KEY, qty int``, 1000 rows). Each of
``rounds`` rounds guards one of ``a`` and ``b`` (they take turns, so that any difference between
the two tables cancels out; the limit is far above one row: the statements pass, as nearly all
do) and runs, back to back in a rotating order, ``statements`` single-row ``UPDATE ... WHERE id =
...`` statements on each of the three tables, from a server-side loop (one transaction per series:
the figure is the per-statement cost, without client round trips or commits). ``never`` is never
guarded.

Returned, in microseconds per statement (medians over the rounds):

* ``guard_cost_us``: the guarded table minus the unguarded one, per round;
  ``guard_cost_us_range``: [min, max] of that difference over the rounds;
* ``guarded_us``, ``unguarded_cost_us``: the statement on the guarded table and on the unguarded
  one (audited either way: capture is in both);
* ``never_guarded_us``: the statement on ``never``, a table that never had a guard;
  ``never_guarded_delta_us``: ``never`` minus the unguarded table, per round (noise around zero:
  a table without a guard pays nothing, whether it had one before or another table has one);
* ``statements``, ``rounds``: as given.

Needs the audit schema installed and its owner (or a superuser): it enables capture and sets
guards.
"""

from __future__ import annotations

import secrets
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool import schema
from pgaudit_tool.bench.cleanup import remove_scratch
from pgaudit_tool.connection import connect
from pgaudit_tool.db import translated_errors
from pgaudit_tool.errors import InvalidInput

#: Rows of each scratch table (the UPDATEs cycle over them).
ROWS = 1000
#: The guard's limit: far above the one row each measured statement changes.
LIMIT = 1_000_000


def guard_cost(conninfo: str, *, statements: int = 2000, rounds: int = 5) -> dict[str, Any]:
    """Measure what a guard costs a single-row UPDATE (see the module's documentation)."""
    if statements < 1 or rounds < 1:
        raise InvalidInput("statements and rounds must be at least 1")
    scratch = f"pgaudit_guardcost_{secrets.token_hex(4)}"
    with connect(conninfo) as conn, translated_errors():
        schema.require_installed(conn)
        try:
            return _measure(conn, scratch, statements, rounds)
        finally:
            _cleanup(conn, scratch)


def _measure(
    conn: psycopg.Connection[Any], scratch: str, statements: int, rounds: int
) -> dict[str, Any]:
    names = ("a", "b", "never")
    tables = {name: sql.Identifier(scratch, name) for name in names}
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
    for table in tables.values():
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, qty int NOT NULL)").format(table)
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT i, 0 FROM generate_series(1, %s) i").format(table),
            (ROWS,),
        )
        conn.execute(sql.SQL("SELECT audit.enable({}::regclass)").format(_name(conn, table)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    loops = {name: _loop(conn, table, statements) for name, table in tables.items()}

    def guard(name: str, on: bool) -> None:
        if on:
            stmt = sql.SQL("SELECT audit.guard({}::regclass, %s)")
            conn.execute(stmt.format(_name(conn, tables[name])), (LIMIT,))
        else:
            stmt = sql.SQL("SELECT audit.guard_remove({}::regclass)")
            conn.execute(stmt.format(_name(conn, tables[name])))

    def series(name: str) -> float:
        start = time.perf_counter()
        conn.execute(loops[name])
        return (time.perf_counter() - start) * 1e6 / statements

    # Warm-up, unmeasured: caches, plans, the capture functions' first calls, both guards.
    for name in ("a", "b"):
        guard(name, True)
        series(name)
        guard(name, False)
        series(name)
    series("never")

    guarded: list[float] = []
    unguarded: list[float] = []
    never: list[float] = []
    for rnd in range(rounds):
        # Tables a and b take turns being guarded, so that a difference between the two tables
        # themselves cancels out; the three series run back to back, in a rotating order.
        on, off = ("a", "b") if rnd % 2 == 0 else ("b", "a")
        guard(on, True)
        guard(off, False)
        order = [on, off, "never"]
        shift = rnd % 3
        times = {name: series(name) for name in order[shift:] + order[:shift]}
        guarded.append(times[on])
        unguarded.append(times[off])
        never.append(times["never"])
    guard("a", False)
    guard("b", False)
    cost = [g - u for g, u in zip(guarded, unguarded, strict=True)]
    elsewhere = [n - u for n, u in zip(never, unguarded, strict=True)]
    return {
        "guard_cost_us": round(statistics.median(cost), 2),
        "guard_cost_us_range": [round(min(cost), 2), round(max(cost), 2)],
        "guarded_us": round(statistics.median(guarded), 2),
        "unguarded_cost_us": round(statistics.median(unguarded), 2),
        "never_guarded_us": round(statistics.median(never), 2),
        "never_guarded_delta_us": round(statistics.median(elsewhere), 2),
        "statements": statements,
        "rounds": rounds,
    }


def _name(conn: psycopg.Connection[Any], table: sql.Identifier) -> sql.Literal:
    """The table's quoted name as a text literal, for a ``::regclass`` cast."""
    return sql.Literal(table.as_string(conn))


def _loop(conn: psycopg.Connection[Any], table: sql.Identifier, statements: int) -> sql.Composed:
    """A server-side loop of ``statements`` single-row UPDATEs by primary key, cycling the rows."""
    body = sql.SQL(
        "BEGIN FOR i IN 1..{n} LOOP UPDATE {t} SET qty = qty + 1 WHERE id = 1 + i % {rows};"
        " END LOOP; END"
    ).format(n=sql.Literal(statements), t=table, rows=sql.Literal(ROWS))
    return sql.SQL("DO {}").format(sql.Literal(body.as_string(conn)))


def _cleanup(conn: psycopg.Connection[Any], scratch: str) -> None:
    """Remove the guard, the scratch tables and their audit rows."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    with conn.transaction():
        conn.execute(
            "SELECT audit.guard_remove(c.oid::regclass) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.oid IN (SELECT relid FROM audit.guard)",
            (scratch,),
        )
        remove_scratch(conn, scratch)
