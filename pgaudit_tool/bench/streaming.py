"""Streaming: what ``history`` and ``table-at`` cost to write out against psql's COPY of the
same rows (issue 14's bar: within 1.5x).

* ``history_stream_<fmt>_ratio`` for csv, json and jsonl: the time to write up to
  :data:`STREAM_CHANGES` changes of the reconstruction table with
  :func:`pgaudit_tool.history.export_history` / the time of
  ``COPY (SELECT to_jsonb(h) FROM audit.history AS h WHERE ... ORDER BY h.id LIMIT N) TO STDOUT``
  read by the same client; ``history_stream_ratio`` is the largest of the three.
* ``table_at_stream_ratio``: ``table-at --format csv`` (export_table_at) of the reconstruction
  table in the middle of its history / ``COPY (SELECT * FROM audit.table_at(NULL::t, T)) TO
  STDOUT (FORMAT csv)``.

Both sides write into /dev/null; they alternate, the order flipping at each repetition, and
the ratios are medians of per-repetition ratios.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from pgaudit_tool.bench.config import HISTORY
from pgaudit_tool.bench.history import History
from pgaudit_tool.bench.session import Session
from pgaudit_tool.db import TableRef
from pgaudit_tool.history import HistoryFilter, export_history
from pgaudit_tool.reconstruct import export_table_at

#: Changes written by each history measurement (at most).
STREAM_CHANGES = 100_000
STREAM_FORMATS = ("csv", "json", "jsonl")


def measure_streaming(s: Session, history: History) -> None:
    """Time the exports and their COPY equivalents; record the samples."""
    changes = min(STREAM_CHANGES, s.config.history_rows)
    s.progress(f"streaming: history of {changes} changes and table-at, vs COPY of the same rows")
    ref = TableRef(history.oid, f"{s.scratch}.{HISTORY}", s.scratch, HISTORY)
    flt = HistoryFilter(table=ref, limit=changes)
    copy_history = sql.SQL(
        "COPY (SELECT to_jsonb(h) FROM audit.history AS h WHERE h.relid = {}::oid"
        " ORDER BY h.id LIMIT {}) TO STDOUT"
    ).format(sql.Literal(history.oid), sql.Literal(changes))
    at = history.middle.at
    copy_table = sql.SQL(
        "COPY (SELECT * FROM audit.table_at(NULL::{}, {})) TO STDOUT (FORMAT csv)"
    ).format(s.table(HISTORY), sql.Literal(at))
    runs: dict[str, Callable[[BinaryIO], None]] = {
        "history_copy": lambda out: _copy(s.conn, copy_history, out),
        **{f"history_{fmt}": _history_export(s.conn, flt, fmt) for fmt in STREAM_FORMATS},
        "table_at_copy": lambda out: _copy(s.conn, copy_table, out),
        "table_at_csv": lambda out: export_table_at(s.conn, ref, at, "csv", out),
    }
    with open(os.devnull, "wb") as sink:
        for rep in range(s.config.repetitions):
            names = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in names:
                start = time.perf_counter()
                runs[name](sink)
                s.sample(f"stream_{name}_ms", (time.perf_counter() - start) * 1000.0)
    s.result["stream_changes"] = changes


def _history_export(
    conn: psycopg.Connection[Any], flt: HistoryFilter, fmt: str
) -> Callable[[BinaryIO], None]:
    return lambda out: export_history(conn, flt, fmt, out)


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, out: BinaryIO) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for data in copy:
            out.write(data)
