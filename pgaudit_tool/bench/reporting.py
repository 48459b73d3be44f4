"""Report phase: how long ``pgaudit-tool report`` takes on a large window, and how big the file is.

- ``report_s``: the html report (as ``pgaudit-tool report --output FILE`` makes it: the
  aggregates read in one snapshot, then rendered) of the window holding ``report_changes``
  changes over 20 tables and 50 actors (transactions of 50 rows: actors and tables in turn, half
  INSERTs of new rows, half UPDATEs of them), narrowed to those 20 tables; the median of
  ``repetitions`` runs.
- ``report_bytes``: the size of that html file.
"""

from __future__ import annotations

import statistics
import time

from psycopg import sql

from pgaudit_tool.api import Audit
from pgaudit_tool.bench.session import Session, audit_tables
from pgaudit_tool.bench.stats import rounded
from pgaudit_tool.connection import connect
from pgaudit_tool.report import render

TABLES, ACTORS, ROWS_PER_TRANSACTION = 20, 50, 50

_FILL = """
CREATE PROCEDURE {proc}(p_transactions int) LANGUAGE plpgsql AS $$
DECLARE
    t text;
    lo int;
BEGIN
    FOR i IN 0 .. p_transactions - 1 LOOP
        PERFORM pg_catalog.set_config('pgaudit.actor', 'user' || pg_catalog.lpad((i % 50)::text, 2, '0'), true);
        t := 'report_' || pg_catalog.lpad((i % 20 + 1)::text, 2, '0');
        lo := (i / 20) / 2 * 50;
        IF (i / 20) % 2 = 0 THEN
            EXECUTE pg_catalog.format('INSERT INTO %I.%I SELECT g, g, ''n'', ''new'''
                                      ' FROM pg_catalog.generate_series(%s, %s) AS g', {schema}, t, lo + 1, lo + 50);
        ELSE
            EXECUTE pg_catalog.format('UPDATE %I.%I SET qty = qty + 1, status = CASE WHEN id %% 3 = 0'
                                      ' THEN ''paid'' ELSE status END WHERE id BETWEEN %s AND %s', {schema}, t, lo + 1, lo + 50);
        END IF;
        COMMIT;
    END LOOP;
END
$$
"""


def report_phase(s: Session) -> None:
    """``report_s`` and ``report_bytes`` into ``s.result``."""
    names = [f"report_{i:02}" for i in range(1, TABLES + 1)]
    for name in names:
        s.conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, qty int, note text, status text)").format(
                s.table(name)
            )
        )
        s.set_audit(s.oid(name), on=True)
    transactions = max(1, s.config.report_changes // ROWS_PER_TRANSACTION)
    s.progress(
        f"report: writing {transactions * ROWS_PER_TRANSACTION} changes over {TABLES} tables"
        f" and {ACTORS} actors"
    )
    row = s.conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()
    assert row is not None
    since = row[0]
    proc = sql.Identifier(s.scratch, "report_fill")
    s.conn.execute(sql.SQL(_FILL).format(proc=proc, schema=sql.Literal(s.scratch)))
    s.conn.execute(sql.SQL("CALL {}(%s)").format(proc), [transactions])
    for log in audit_tables():
        s.vacuum(log, analyze=True)
    tables = [f"{s.scratch}.{name}" for name in names]
    seconds: list[float] = []
    size = 0
    for _ in range(s.config.repetitions):
        with connect(s.conninfo) as conn:
            conn.execute("SET TimeZone TO 'UTC'")
            start = time.perf_counter()
            text = render(Audit(conn).report(since=since, tables=tables), "html")
            seconds.append(time.perf_counter() - start)
        size = len(text.encode())
        s.progress(f"  report: {seconds[-1]:.1f} s, {size:,} bytes")
    s.result["report_s"] = rounded(statistics.median(seconds), 2)
    s.result["report_bytes"] = size
    s.result["report_changes"] = transactions * ROWS_PER_TRANSACTION
