"""Throughput phases: single-row UPDATEs by key, and pgbench's TPC-B-like workload."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from pgaudit_tool.bench.config import (
    AUDITED,
    BARE_LOG,
    FLOOR,
    PLAIN,
    TPCB,
    TPCB_LARGE,
    TPCB_TABLES,
    BenchConfig,
    scratch_schemas,
)
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


@dataclass(frozen=True)
class TpcbSeries:
    """One TPC-B series: the prefix of its keys (``tpcb``, ``tpcb_scale10``), pgbench's scale
    factor and the schema of its four pgbench tables."""

    prefix: str
    scale: int
    schema: str

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)


def tpcb_plan(config: BenchConfig, scratch: str) -> list[TpcbSeries]:
    """The TPC-B series of a run, in order: at ``config.scale`` in the scratch schema, then
    (unless ``large_tpcb`` is off) at ``config.large_scale`` in a schema of its own, as
    ``pgbench -i`` always names its tables the same."""
    plan = [TpcbSeries(TPCB, config.scale, scratch)]
    if config.large_tpcb:
        plan.append(TpcbSeries(TPCB_LARGE, config.large_scale, scratch_schemas(scratch)[0]))
    return plan


def tpcb_phase(s: Session) -> None:
    """TPS of pgbench's TPC-B-like workload, its four tables unaudited, unaudited with every
    write logging its images into ``bare_log`` (the floor), and audited; at each scale of
    :func:`tpcb_plan`, one series after the other."""
    if s.pgbench is None:
        s.notes.append("pgbench not found or disabled: TPC-B not measured.")
        return
    for tpcb in tpcb_plan(s.config, s.scratch):
        _tpcb_series(s, tpcb)
    s.notes.append(
        "TPC-B: pgbench_history was given a key (hid bigserial PRIMARY KEY) for the unaudited, "
        "bare log and audited runs, because capture needs a key."
    )
    if not s.config.large_tpcb:
        s.notes.append(f"{TPCB_LARGE}_*: the large-scale TPC-B series was skipped.")
        return
    s.notes.append(
        f"{TPCB_LARGE}_*: the same TPC-B series at scale {s.config.large_scale} (as many "
        "branches, so less contention on a branch row), run after the scale "
        f"{s.config.scale} one, its pgbench tables in a schema of their own "
        f"({scratch_schemas(s.scratch)[0]}), bare_log shared."
    )


def _tpcb_series(s: Session, tpcb: TpcbSeries) -> None:
    """pgbench -i at the series' scale in its schema, then the repetitions of :func:`series`."""
    assert s.pgbench is not None
    if tpcb.schema != s.scratch:
        s.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(tpcb.schema)))
    s.progress(f"TPC-B: pgbench -i -s {tpcb.scale} (in {tpcb.schema})")
    run_pgbench(s.pgbench, ["-i", "-q", "-s", str(tpcb.scale)], _target(s, tpcb.schema))
    s.conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN hid bigserial PRIMARY KEY").format(
            tpcb.table("pgbench_history")
        )
    )
    oids = [s.oid(t, tpcb.schema) for t in TPCB_TABLES]
    for rep in range(s.config.repetitions):
        for name in series(rep):
            _tpcb_run(s, tpcb, name, oids)


def _tpcb_run(s: Session, tpcb: TpcbSeries, name: str, oids: Sequence[int]) -> None:
    with translated_errors():
        for oid in oids:
            s.set_audit(oid, on=name == AUDITED)
    for table in TPCB_TABLES:
        s.vacuum(tpcb.table(table))
    s.checkpoint()
    if name == FLOOR:
        statements = tpcb_floor_statements(
            lambda table: s.table(BARE_LOG) if table == BARE_LOG else tpcb.table(table)
        )
        script: list[str | sql.Composable] = [*TPCB_SET_LINES, *statements]
        # a custom script's :scale is -s (1 without it), not pgbench_branches' row count
        tps = _script_tps(s, script, ["-s", str(tpcb.scale)], search_path=tpcb.schema)
        s.clear_bare_log()
    else:
        tps = _pgbench_tps(s, [], search_path=tpcb.schema)
    s.sample(f"{tpcb.prefix}_{name}_tps", tps)


def _script_tps(
    s: Session,
    lines: Sequence[str | sql.Composable],
    args: list[str],
    search_path: str | None = None,
) -> float:
    """TPS of a custom pgbench script: its meta-commands (str) and SQL statements, in order;
    ``search_path``: the schema pgbench's connections look in first (see :func:`_target`)."""
    text = "".join(
        f"{line}\n" if isinstance(line, str) else f"{line.as_string(s.conn)};\n" for line in lines
    )
    with tempfile.TemporaryDirectory(prefix="pgaudit-bench-") as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(text, encoding="utf-8")
        return _pgbench_tps(s, ["-f", str(path), *args], search_path)


def _pgbench_tps(s: Session, args: list[str], search_path: str | None = None) -> float:
    assert s.pgbench is not None
    seconds = max(1, round(s.config.duration))
    clients = str(s.config.clients)
    # Prepared statements in every series: the bare log's CTE is then planned once per
    # connection, as capture's own statements are (and as most drivers do).
    command = ["-n", "-M", "prepared", "-c", clients, "-j", clients, "-T", str(seconds), *args]
    output = run_pgbench(s.pgbench, command, _target(s, search_path), seconds + 300)
    return parse_tps(output)


def _target(s: Session, search_path: str | None) -> Target:
    return pgbench_target(s.conninfo, search_path)
