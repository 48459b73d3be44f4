"""Throughput phases: single-row UPDATEs by key, and pgbench's TPC-B-like workload."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from psycopg import sql

from pgaudit_tool.bench.config import AUDITED, PLAIN, TPCB_TABLES
from pgaudit_tool.bench.driver import driver_tps
from pgaudit_tool.bench.pgbench import Target, parse_tps, pgbench_target, run_pgbench
from pgaudit_tool.bench.session import Session, order
from pgaudit_tool.bench.sql import bulk_sql, single_update_sql
from pgaudit_tool.db import translated_errors


def single_row_phase(s: Session) -> None:
    """TPS of single-row UPDATEs on ``plain`` and ``audited``, with pgbench or the built-in
    driver."""
    driver = "pgbench" if s.pgbench else "builtin"
    s.result["single_row_driver"] = driver
    if driver == "builtin":
        s.notes.append(
            "single-row UPDATEs were driven by this process (threads, one connection each): "
            "client overhead is part of every transaction, which understates the ratio's "
            "distance from 1 compared with pgbench."
        )
    s.progress(f"single-row UPDATEs: loading {s.config.rows} rows per table")
    for name in (PLAIN, AUDITED):
        s.conn.execute(bulk_sql("insert", s.table(name), s.config.rows))
        s.vacuum(s.table(name), analyze=True)
    for rep in range(s.config.repetitions):
        for name in order(rep):
            s.vacuum(s.table(name))
            s.checkpoint()
            tps = _single_row_run(s, name)
            s.sample(f"single_row_{name}_tps", tps)


def _single_row_run(s: Session, name: str) -> float:
    if s.pgbench is None:
        stmt = single_update_sql(s.table(name))
        return driver_tps(s.conninfo, stmt, s.config.rows, s.config.clients, s.config.duration)
    stmt = single_update_sql(s.table(name), ":id")
    script = f"\\set id random(1, {s.config.rows})\n{stmt.as_string(s.conn)};\n"
    with tempfile.TemporaryDirectory(prefix="pgaudit-bench-") as tmp:
        path = Path(tmp) / "single_row_update.sql"
        path.write_text(script, encoding="utf-8")
        return _pgbench_tps(s, ["-f", str(path)])


def tpcb_phase(s: Session) -> None:
    """TPS of pgbench's TPC-B-like workload, its four tables unaudited and audited."""
    if s.pgbench is None:
        s.notes.append("pgbench not found or disabled: TPC-B not measured.")
        return
    s.progress(f"TPC-B: pgbench -i -s {s.config.scale}")
    run_pgbench(s.pgbench, ["-i", "-q", "-s", str(s.config.scale)], _target(s, True))
    s.conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN hid bigserial PRIMARY KEY").format(
            s.table("pgbench_history")
        )
    )
    s.notes.append(
        "TPC-B: pgbench_history was given a key (hid bigserial PRIMARY KEY) for both the "
        "unaudited and the audited runs, because capture needs a key."
    )
    oids = [s.oid(t) for t in TPCB_TABLES]
    for rep in range(s.config.repetitions):
        for name in order(rep):
            _tpcb_run(s, name, oids)


def _tpcb_run(s: Session, name: str, oids: Sequence[int]) -> None:
    with translated_errors():
        for oid in oids:
            s.set_audit(oid, on=name == AUDITED)
    for table in TPCB_TABLES:
        s.vacuum(s.table(table))
    s.checkpoint()
    tps = _pgbench_tps(s, [], search_path=True)
    s.sample(f"tpcb_{name}_tps", tps)


def _pgbench_tps(s: Session, args: list[str], search_path: bool = False) -> float:
    assert s.pgbench is not None
    seconds = max(1, round(s.config.duration))
    clients = str(s.config.clients)
    command = ["-n", "-c", clients, "-j", clients, "-T", str(seconds), *args]
    output = run_pgbench(s.pgbench, command, _target(s, search_path), seconds + 300)
    return parse_tps(output)


def _target(s: Session, search_path: bool) -> Target:
    return pgbench_target(s.conninfo, s.scratch if search_path else None)
