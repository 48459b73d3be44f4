"""Bulk phase: INSERT, UPDATE and DELETE of every row, unaudited, audited and as a bare log."""

from __future__ import annotations

from pgaudit_tool.bench.archiving import archive_phase
from pgaudit_tool.bench.config import AUDITED, BARE_LOG, OPERATIONS, PLAIN
from pgaudit_tool.bench.session import Session, audit_tables, order, timed
from pgaudit_tool.bench.sql import bare_log_sql, bulk_sql
from pgaudit_tool.bench.storage import record_storage


def bulk_phase(s: Session) -> None:
    """Each statement on ``plain`` and ``audited`` (and its bare log), then the storage used."""
    for rep in range(s.config.repetitions):
        s.progress(f"bulk statements, repetition {rep + 1}/{s.config.repetitions}")
        for op in OPERATIONS:
            for name in order(rep):
                _bulk_step(s, op, name)
    record_storage(s)
    archive_phase(s)


def _bulk_step(s: Session, op: str, name: str) -> None:
    if op == "delete" and name == PLAIN:
        s.sample(f"{op}_{BARE_LOG}_ms", _time_bare_log(s, op))
    s.sample(f"{op}_{name}_ms", _time_statement(s, op, name))
    if op != "delete" and name == PLAIN:
        s.sample(f"{op}_{BARE_LOG}_ms", _time_bare_log(s, op))


def _time_statement(s: Session, op: str, name: str) -> float:
    s.checkpoint()
    elapsed = timed(s.conn, bulk_sql(op, s.table(name), s.config.rows))
    s.vacuum(s.table(name))
    if name == AUDITED:
        for audit_table in audit_tables():
            s.vacuum(audit_table)
    return elapsed


def _time_bare_log(s: Session, op: str) -> float:
    s.checkpoint()
    elapsed = timed(s.conn, bare_log_sql(op, s.table(BARE_LOG), s.table(PLAIN)))
    s.clear_bare_log()
    return elapsed
