"""The result of a run: every key of RESULT_KEYS, from the samples, the phases and the server."""

from __future__ import annotations

import statistics
from typing import Any

import psycopg

from pgaudit_tool.bench.config import (
    AUDITED,
    BARE_LOG,
    FLOOR,
    OPERATIONS,
    PLAIN,
    RAW_KEYS,
    RESULT_KEYS,
    SETTINGS,
    TPCB,
    TPCB_LARGE,
    BenchConfig,
)
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.stats import Samples, rounded
from pgaudit_tool.bench.streaming import STREAM_FORMATS


def build_report(s: Session) -> dict[str, Any]:
    """Every key of RESULT_KEYS: ratios and medians of the samples, the phases' own figures,
    the run's parameters, the server's settings and the notes."""
    result: dict[str, Any] = {key: None for key in RESULT_KEYS}
    result.update(s.result)
    result.update(_ratios(s.samples))
    for key in RAW_KEYS:
        result[key] = rounded(s.samples.median(key), 2 if key.endswith("_ms") else 1)
    result.update(_reconstruction_figures(s.samples))
    result.update(_context(s))
    return result


def _ratios(samples: Samples) -> dict[str, Any]:
    """The bulk, limit, floor and TPS ratios (medians of the per-repetition ratios)."""
    result: dict[str, Any] = {}
    for op in OPERATIONS:
        plain, audited, bare = (f"{op}_{w}_ms" for w in (PLAIN, AUDITED, BARE_LOG))
        result[f"{op}_ratio"] = rounded(samples.ratio(audited, plain), 3)
        result[f"{op}_limit_ratio"] = rounded(samples.ratio(audited, plain, bare), 3)
        bare_share = samples.ratio(bare, plain)
        result[f"{op}_floor_ratio"] = None if bare_share is None else rounded(1 + bare_share, 3)
    limits = [result[f"{op}_limit_ratio"] for op in OPERATIONS]
    result["limit_ratio"] = rounded(statistics.median(limits), 3) if None not in limits else None
    for phase, key in (("single_row", "single_row_update"), (TPCB, TPCB), (TPCB_LARGE, TPCB_LARGE)):
        plain, audited, floor = (f"{phase}_{w}_tps" for w in (PLAIN, AUDITED, FLOOR))
        result[f"{key}_tps_ratio"] = rounded(samples.ratio(audited, plain), 3)
        result[f"{key}_floor_tps_ratio"] = rounded(samples.ratio(floor, plain), 3)
    return result


def _reconstruction_figures(samples: Samples) -> dict[str, Any]:
    """Medians of the revert and table_at timings, and table_at's ratio, when measured."""
    result: dict[str, Any] = {}
    if samples.values.get("revert_ms"):
        result["revert_ms"] = rounded(samples.median("revert_ms"), 2)
        result["revert_update_ms"] = rounded(samples.median("revert_update_ms"), 2)
    if samples.values.get("table_at_ms"):
        result["table_at_ratio"] = rounded(samples.ratio("table_at_ms", "table_at_live_ms"), 3)
        result["table_at_ms"] = rounded(samples.median("table_at_ms"), 2)
        result["table_at_live_ms"] = rounded(samples.median("table_at_live_ms"), 2)
    if samples.values.get("stream_history_copy_ms"):
        per_format = {
            fmt: samples.ratio(f"stream_history_{fmt}_ms", "stream_history_copy_ms")
            for fmt in STREAM_FORMATS
        }
        for fmt, ratio in per_format.items():
            result[f"history_stream_{fmt}_ratio"] = rounded(ratio, 3)
        worst = [r for r in per_format.values() if r is not None]
        result["history_stream_ratio"] = rounded(max(worst), 3) if worst else None
        result["table_at_stream_ratio"] = rounded(
            samples.ratio("stream_table_at_csv_ms", "stream_table_at_copy_ms"), 3
        )
    return result


def _context(s: Session) -> dict[str, Any]:
    cfg = s.config
    notes = [*s.notes, *_standard_notes(cfg)]
    return {
        "rows": cfg.rows,
        "history_rows": cfg.history_rows if cfg.reconstruction else None,
        "clients": cfg.clients,
        "duration": cfg.duration,
        "repetitions": cfg.repetitions,
        "scale": cfg.scale,
        "large_scale": cfg.large_scale if cfg.large_tpcb else None,
        "pgbench": s.pgbench,
        "server_version": _show(s.conn, "server_version"),
        "settings": {name: _show(s.conn, name) for name in SETTINGS},
        "notes": notes,
    }


def _standard_notes(cfg: BenchConfig) -> list[str]:
    notes = [
        "Ratios are medians of per-repetition ratios; unaudited and audited runs alternate, "
        "the order flipping at each repetition.",
        "pgbench runs use prepared statements (-M prepared) in every series, so that each "
        "statement is planned once per connection, as capture's own statements are; the "
        "built-in driver prepares its statements too.",
        "Bulk statements: each timed alone (autocommit) right after a CHECKPOINT; the table, and "
        "after audited statements audit.change and audit.transaction, are vacuumed afterwards, "
        "outside the timing.",
        "limit_ratio is the median of insert/update/delete_limit_ratio: audited time / (unaudited "
        "time + INSERT ... SELECT to_jsonb(t) of the same rows into a bare table). For UPDATE the "
        "bare log stores two images per row (old and new) in one row. insert/update/delete_"
        "floor_ratio: (unaudited time + that bare log's time) / unaudited time, the least ratio "
        "any capture storing the JSONB images can have.",
        "single_row_update_floor_tps_ratio, tpcb_floor_tps_ratio, tpcb_scale10_floor_tps_ratio: "
        "TPS of the unaudited workload whose every write also stores the row's JSONB images in "
        "a bare table in the same statement (UPDATE: old and new, INSERT: new; a CTE) / "
        "unaudited TPS, measured in the same repetitions (unaudited and audited swapping first "
        "and last place, the bare log between them): the most TPS any capture storing the JSONB "
        "images can keep.",
        "audit_bytes_per_change: total size (heap, indexes, TOAST, maps) of copies of "
        "audit.change and audit.transaction (same columns and indexes) holding only the audit "
        "rows of the bulk phase / changes recorded then (inserts, updates, deletes); copies, "
        "because free space left in the audit tables would distort their growth. "
        "live_bytes_per_change is the same figure.",
        "archive_changes_per_s: the bulk phase's change rows and their transaction rows written "
        "to Parquet as pgaudit-tool archive writes a partition (server COPY text, DuckDB to "
        "zstd Parquet, fsync, counted back) / seconds, median of the repetitions after a vacuum "
        "and a checkpoint; archive_bytes_per_change: the files' "
        "bytes / changes; archive_bytes_ratio: that / live_bytes_per_change.",
    ]
    if cfg.duration != max(1, round(cfg.duration)):
        notes.append(f"pgbench takes whole seconds: runs lasted {max(1, round(cfg.duration))} s.")
    if cfg.reconstruction:
        notes.extend(
            [
                "row_at: audit.row_at of random keys (some deleted or not yet inserted at the "
                "instant) at random instants recorded during the history, each timed alone "
                "(prepared, execute + fetch), after warm-up calls; p99 is the nearest rank.",
                "table_at_ratio: CREATE TABLE AS SELECT * FROM audit.table_at(NULL::t, T) / "
                "CREATE TABLE AS SELECT * FROM t, T in the middle of the history (every key has "
                "changed since when history_rows >= 3 x rows); median of per-repetition ratios, "
                "each statement after a CHECKPOINT.",
                "history_stream_ratio: the slowest of history --format csv, json and jsonl "
                "(history_stream_<format>_ratio) of stream_changes changes / psql's COPY (SELECT "
                "to_jsonb(h) FROM audit.history h ... ORDER BY h.id LIMIT N) TO STDOUT; "
                "table_at_stream_ratio: table-at --format csv (key order) / COPY (SELECT * FROM "
                "audit.table_at(NULL::t, T)) TO STDOUT (FORMAT csv); both into /dev/null, "
                "alternating, medians of per-repetition ratios.",
            ]
        )
    if cfg.archive_reading:
        notes.append(
            "history_archive_ms: the history of one row (Audit.history) read through an archive "
            "of archived_changes synthetic changes in a throwaway database; history_archive_"
            "actor_month_jsonl_ms: one actor's month (history_archive_actor_month_rows changes) "
            "as history --format jsonl writes it; history_archive_actor_month_ms: the same as "
            "Python values through Audit.history; row_at_archive_ms and blame_archive_ms: one "
            "row of t one second into the archive (Audit.row_at), and its blame; medians of 3. "
            "The targets are for 10,000,000 archived changes."
        )
    if cfg.reporting:
        notes.append(
            "report_s: pgaudit-tool report's html (aggregates in one snapshot, then rendered) of "
            "report_changes changes over 20 tables and 50 actors (transactions of 50 rows), the "
            "window narrowed to those tables; median of the repetitions; report_bytes: its size."
        )
    return notes


def _show(conn: psycopg.Connection[Any], setting: str) -> str | None:
    row = conn.execute("SELECT current_setting(%s, true)", (setting,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])
