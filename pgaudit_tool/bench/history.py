"""The reconstruction table ``history``: rows, then chunked UPDATEs until it has enough audit
rows, with the instant after each commit recorded along with the table's state then."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool.bench.config import (
    CHURN_EVERY,
    HISTORY,
    HISTORY_TRANSACTIONS,
    MIN_HISTORY_TRANSACTIONS,
)
from pgaudit_tool.bench.session import Session, audit_tables
from pgaudit_tool.bench.sql import (
    TABLE_DDL,
    history_delete_sql,
    history_update_sql,
    insert_range_sql,
)
from pgaudit_tool.db import translated_errors


@dataclass(frozen=True)
class Instant:
    """An instant recorded between two history transactions, with the table's state then."""

    at: datetime
    rows: int
    qty_sum: int


@dataclass
class History:
    """The reconstruction table and what was recorded while building its history."""

    oid: int
    instants: list[Instant]
    max_id: int  # keys 1..max_id existed at some point
    transactions: int

    @property
    def middle(self) -> Instant:
        return self.instants[len(self.instants) // 2]


@dataclass
class _Growth:
    """Where the build of the history stands."""

    table: sql.Identifier
    chunk: int  # keys updated by each transaction
    changes: int  # audit rows so far
    next_id: int  # key of the next inserted row
    low: int = 1  # first key of the next chunk
    tx: int = 0  # transactions after the initial INSERT
    reported: int = 0  # tenths of history_rows reported through progress


def build_history(s: Session) -> History:
    """The audited table ``history``: ``rows`` rows, then chunked UPDATEs (one transaction
    each, some also deleting and inserting rows) until it has ``history_rows`` audit rows."""
    cfg = s.config
    table = s.table(HISTORY)
    s.conn.execute(sql.SQL(TABLE_DDL).format(table))
    oid = s.oid(HISTORY)
    with translated_errors():
        s.set_audit(oid, on=True)
    s.progress(f"reconstruction: {cfg.rows} rows, then updates up to {cfg.history_rows} audit rows")
    growth = _Growth(
        table=table,
        chunk=max(1, min(cfg.rows, cfg.history_rows // HISTORY_TRANSACTIONS)),
        changes=s.conn.execute(insert_range_sql(table, 1, cfg.rows)).rowcount,
        next_id=cfg.rows + 1,
    )
    instants = [take_instant(s.conn, table)]
    while growth.changes < cfg.history_rows or growth.tx < MIN_HISTORY_TRANSACTIONS:
        _history_transaction(s.conn, growth)
        instants.append(take_instant(s.conn, table))
        _report_growth(s, growth)
    return _finish(s, oid, instants, growth)


def _history_transaction(conn: psycopg.Connection[Any], g: _Growth) -> None:
    """UPDATE of the next chunk of keys; every CHURN_EVERY-th transaction also deletes the ids
    of the chunk divisible by 50 and inserts new rows (4% of a chunk)."""
    high = g.low + g.chunk - 1
    with conn.transaction():
        g.changes += conn.execute(history_update_sql(g.table, g.low, high)).rowcount
        if g.tx % CHURN_EVERY == CHURN_EVERY - 1:
            g.changes += conn.execute(history_delete_sql(g.table, g.low, high)).rowcount
            added = max(1, g.chunk // 25)
            last = g.next_id + added - 1
            g.changes += conn.execute(insert_range_sql(g.table, g.next_id, last)).rowcount
            g.next_id = last + 1
    g.tx += 1
    g.low = high + 1 if high + 1 < g.next_id else 1


def _report_growth(s: Session, g: _Growth) -> None:
    """A progress line at each further tenth of ``history_rows``."""
    if g.changes * 10 // s.config.history_rows > g.reported:
        g.reported = min(10, g.changes * 10 // s.config.history_rows)
        s.progress(f"  history: {g.changes} changes in {g.tx + 1} transactions")


def _finish(s: Session, oid: int, instants: list[Instant], g: _Growth) -> History:
    """Vacuum and analyse the table and the audit tables; record the history's size."""
    for name in (g.table, *audit_tables()):
        s.vacuum(name, analyze=True)
    row = s.conn.execute("SELECT count(*) FROM audit.change WHERE relid = %s", (oid,)).fetchone()
    s.result["row_at_audit_rows"] = int(row[0]) if row else 0
    s.result["history_transactions"] = g.tx + 1
    return History(oid=oid, instants=instants, max_id=g.next_id - 1, transactions=g.tx + 1)


def take_instant(conn: psycopg.Connection[Any], table: sql.Identifier) -> Instant:
    """Now (after the last commit), with the table's row count and sum(qty)."""
    row = conn.execute(
        sql.SQL("SELECT clock_timestamp(), count(*), coalesce(sum(qty), 0) FROM {}").format(table)
    ).fetchone()
    assert row is not None
    return Instant(at=row[0], rows=int(row[1]), qty_sum=int(row[2]))
