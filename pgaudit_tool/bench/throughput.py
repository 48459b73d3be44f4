"""Throughput phases: single-row UPDATEs by key, and pgbench's TPC-B-like workload."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from psycopg import sql

from pgaudit_tool.bench.config import AUDITED, BARE_LOG, FLOOR, PLAIN, TPCB_TABLES
from pgaudit_tool.bench.driver import driver_tps
from pgaudit_tool.bench.pgbench import Target, parse_tps, pgbench_target, run_pgbench
from pgaudit_tool.bench.session import Session, series
from pgaudit_tool.bench.sql import (
    TPCB_SET_LINES,
    bulk_sql,
    single_update_floor_sql,
    single_update_sql,
    tpcb_floor_statements,
)
from pgaudit_tool.db import translated_errors


def single_row_phase(s: Session) -> None:
    """TPS of single-row UPDATEs on ``plain``, on ``plain`` logging the row's images into
    ``bare_log`` in the same statement (the floor), and on ``audited``, with pgbench or the
    built-in driver."""
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
        for name in series(rep):
            s.vacuum(s.table(AUDITED if name == AUDITED else PLAIN))
            s.checkpoint()
            tps = _single_row_run(s, name)
            s.sample(f"single_row_{name}_tps", tps)
            if name == FLOOR:
                s.clear_bare_log()


def _single_row_run(s: Session, name: str) -> float:
    key = "%(id)s" if s.pgbench is None else ":id"
    if name == FLOOR:
        stmt = single_update_floor_sql(s.table(PLAIN), s.table(BARE_LOG), key)
    else:
        stmt = single_update_sql(s.table(name), key)
    if s.pgbench is None:
        return driver_tps(s.conninfo, stmt, s.config.rows, s.config.clients, s.config.duration)
    return _script_tps(s, [f"\\set id random(1, {s.config.rows})", stmt], [])


def tpcb_phase(s: Session) -> None:
    """TPS of pgbench's TPC-B-like workload, its four tables unaudited, unaudited with every
    write logging its images into ``bare_log`` (the floor), and audited."""
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
        "TPC-B: pgbench_history was given a key (hid bigserial PRIMARY KEY) for the unaudited, "
        "bare log and audited runs, because capture needs a key."
    )
    oids = [s.oid(t) for t in TPCB_TABLES]
    for rep in range(s.config.repetitions):
        for name in series(rep):
            _tpcb_run(s, name, oids)


def _tpcb_run(s: Session, name: str, oids: Sequence[int]) -> None:
    with translated_errors():
        for oid in oids:
            s.set_audit(oid, on=name == AUDITED)
    for table in TPCB_TABLES:
        s.vacuum(s.table(table))
    s.checkpoint()
    if name == FLOOR:
        script: list[str | sql.Composable] = [*TPCB_SET_LINES, *tpcb_floor_statements(s.table)]
        # a custom script's :scale is -s (1 without it), not pgbench_branches' row count
        tps = _script_tps(s, script, ["-s", str(s.config.scale)], search_path=True)
        s.clear_bare_log()
    else:
        tps = _pgbench_tps(s, [], search_path=True)
    s.sample(f"tpcb_{name}_tps", tps)


def _script_tps(
    s: Session, lines: Sequence[str | sql.Composable], args: list[str], search_path: bool = False
) -> float:
    """TPS of a custom pgbench script: its meta-commands (str) and SQL statements, in order."""
    text = "".join(
        f"{line}\n" if isinstance(line, str) else f"{line.as_string(s.conn)};\n" for line in lines
    )
    with tempfile.TemporaryDirectory(prefix="pgaudit-bench-") as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(text, encoding="utf-8")
        return _pgbench_tps(s, ["-f", str(path), *args], search_path)


def _pgbench_tps(s: Session, args: list[str], search_path: bool = False) -> float:
    assert s.pgbench is not None
    seconds = max(1, round(s.config.duration))
    clients = str(s.config.clients)
    # Prepared statements in every series: the bare log's CTE is then planned once per
    # connection, as capture's own statements are (and as most drivers do).
    command = ["-n", "-M", "prepared", "-c", clients, "-j", clients, "-T", str(seconds), *args]
    output = run_pgbench(s.pgbench, command, _target(s, search_path), seconds + 300)
    return parse_tps(output)


def _target(s: Session, search_path: bool) -> Target:
    return pgbench_target(s.conninfo, s.scratch if search_path else None)
