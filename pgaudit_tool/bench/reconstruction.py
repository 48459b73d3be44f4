"""Reconstruction phase: audit.row_at lookups, audit.table_at against a copy of the live
table, and revert of an UPDATE against the UPDATE itself."""

from __future__ import annotations

import json
import random
import statistics
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool.bench.config import HISTORY, ROW_AT_SAMPLES, ROW_AT_WARMUP
from pgaudit_tool.bench.history import History, Instant, build_history
from pgaudit_tool.bench.session import Session, timed
from pgaudit_tool.bench.stats import percentile, rounded
from pgaudit_tool.bench.streaming import measure_streaming
from pgaudit_tool.errors import AuditError

#: A row_at lookup: table OID, key (JSON text), instant.
_Probe = tuple[int, str, datetime]


def reconstruction_phase(s: Session) -> None:
    """Build the history, then time row_at, table_at and revert (unless disabled)."""
    if not s.config.reconstruction:
        s.notes.append("reconstruction phase disabled: row_at and table_at figures not measured.")
        return
    history = build_history(s)
    _measure_row_at(s, history)
    _measure_table_at(s, history)
    measure_streaming(s, history)
    s.result["revert_ratio"] = _measure_revert(s)


def _measure_row_at(s: Session, history: History) -> None:
    samples = min(ROW_AT_SAMPLES, s.config.rows)
    s.progress(f"row-at: {samples} lookups at random keys and instants")
    times, found = _time_row_at(s.conn, _row_at_probes(history, samples))
    if not found:
        raise AuditError("bench: audit.row_at found none of the rows looked up")
    s.result["row_at_samples"] = len(times)
    s.result["row_at_median_ms"] = rounded(statistics.median(times), 3)
    s.result["row_at_p99_ms"] = rounded(percentile(times, 99), 3)
    s.progress(
        f"  row_at: median {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms"
    )


def _row_at_probes(history: History, samples: int) -> list[_Probe]:
    """Random keys (some deleted or not yet inserted then) at random recorded instants,
    warm-up lookups first."""
    rng = random.Random(4242)
    return [
        (
            history.oid,
            json.dumps({"id": rng.randint(1, history.max_id)}),
            rng.choice(history.instants).at,
        )
        for _ in range(ROW_AT_WARMUP + samples)
    ]


def _time_row_at(conn: psycopg.Connection[Any], probes: list[_Probe]) -> tuple[list[float], int]:
    """Milliseconds of each lookup after the warm-up ones, and how many of them found a row."""
    query = "SELECT audit.row_at(%s::oid::regclass, %s::jsonb, %s::timestamptz)"
    times: list[float] = []
    found = 0
    with conn.cursor() as cur:
        for i, params in enumerate(probes):
            start = time.perf_counter()
            cur.execute(query, params, prepare=True)
            row = cur.fetchone()
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= ROW_AT_WARMUP:
                times.append(elapsed)
                found += row is not None and row[0] is not None
    return times, found


def _measure_table_at(s: Session, history: History) -> None:
    mid = history.middle
    s.progress(f"table-at: {mid.rows} rows at the middle of the history vs the live table")
    source = s.table(HISTORY)
    copies = {"table_at": s.table("table_at_copy"), "table_at_live": s.table("live_copy")}
    selects = {
        "table_at": sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {})").format(
            source, sql.Literal(mid.at)
        ),
        "table_at_live": sql.SQL("SELECT * FROM {}").format(source),
    }
    for rep in range(s.config.repetitions):
        names = ("table_at", "table_at_live") if rep % 2 == 0 else ("table_at_live", "table_at")
        for name in names:
            _time_copy(s, name, copies[name], selects[name], mid)
    s.result["table_at_rows"] = mid.rows


def _time_copy(
    s: Session, name: str, copy: sql.Identifier, select: sql.Composed, mid: Instant
) -> None:
    """CREATE TABLE copy AS select, timed after a CHECKPOINT, checked (table_at), dropped."""
    s.checkpoint()
    create = sql.SQL("CREATE TABLE {} AS ").format(copy) + select
    s.sample(f"{name}_ms", timed(s.conn, create))
    if name == "table_at":
        _check_rebuilt(s.conn, copy, mid)
    s.conn.execute(sql.SQL("DROP TABLE {}").format(copy))


def _check_rebuilt(conn: psycopg.Connection[Any], copy: sql.Identifier, expected: Instant) -> None:
    """The table rebuilt by table_at has the row count and sum(qty) recorded at T."""
    row = conn.execute(
        sql.SQL("SELECT count(*), coalesce(sum(qty), 0) FROM {}").format(copy)
    ).fetchone()
    got = (int(row[0]), int(row[1])) if row else None
    if got != (expected.rows, expected.qty_sum):
        raise AuditError(
            f"bench: audit.table_at at {expected.at} gave (rows, sum(qty)) = {got},"
            f" expected ({expected.rows}, {expected.qty_sum})"
        )


def _measure_revert(s: Session) -> float | None:
    """Revert of an UPDATE of ``rows`` rows against the UPDATE itself (median ratio over the
    repetitions), each in a scratch schema of its own (see :func:`pgaudit_tool.bench.revert_cost.bench_revert`)."""
    from pgaudit_tool.bench.revert_cost import bench_revert

    ratios = []
    for rep in range(s.config.repetitions):
        s.progress(f"revert: {s.config.rows} rows, repetition {rep + 1}")
        timing = bench_revert(s.conninfo, rows=s.config.rows)
        s.sample("revert_update_ms", float(timing["update_ms"]))
        s.sample("revert_ms", float(timing["revert_ms"]))
        ratios.append(float(timing["revert_ms"]) / max(float(timing["update_ms"]), 1e-3))
    s.notes.append(
        "revert_ratio: time to revert (plan, conflict check, apply, captured) the transaction of"
        " an UPDATE of every row, against that UPDATE; median over the repetitions."
    )
    return round(statistics.median(ratios), 3)
