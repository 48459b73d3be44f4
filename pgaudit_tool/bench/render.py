"""The bench result for people: one row per metric, with its target, verdict and what it is
compared with."""

from __future__ import annotations

from typing import Any

from pgaudit_tool.bench.config import (
    FLOOR_KEYS,
    OPERATIONS,
    RESULT_KEYS,
    TARGETS,
    TPCB,
    TPCB_LARGE,
)

#: Columns of :func:`render_table`'s rows, in order.
TABLE_COLUMNS = ("metric", "value", "target", "status", "compared_with")

SAME_RUN = "unaudited, same run"
FLOOR_VS_SAME_RUN = "bare JSONB log (floor) vs unaudited, same run"
_TPS_PHASES = ("single_row_update", TPCB, TPCB_LARGE)
_COPY = "psql's COPY of the same changes as to_jsonb, same run"
_GUARD = "same UPDATE on the unguarded table, same round"
#: Metric -> where its comparison point comes from (figures absent here compare with nothing).
COMPARED_WITH: dict[str, str] = {
    **{f"{op}_ratio": SAME_RUN for op in OPERATIONS},
    **{f"{phase}_tps_ratio": SAME_RUN for phase in _TPS_PHASES},
    "limit_ratio": "unaudited + bare JSONB log, same run (median of the three)",
    **{f"{op}_limit_ratio": "unaudited + bare JSONB log, same run" for op in OPERATIONS},
    **{f"{op}_floor_ratio": FLOOR_VS_SAME_RUN for op in OPERATIONS},
    **{f"{phase}_floor_tps_ratio": FLOOR_VS_SAME_RUN for phase in _TPS_PHASES},
    "audit_bytes_per_change": "images only (image_bytes_per_change)",
    "archive_changes_per_s": "absolute",
    "archive_bytes_ratio": "live_bytes_per_change, same run",
    "table_at_ratio": "CREATE TABLE AS of the live table, same run",
    "revert_ratio": "the UPDATE it reverts, same run",
    "history_stream_ratio": _COPY,
    **{f"history_stream_{fmt}_ratio": _COPY for fmt in ("csv", "json", "jsonl")},
    "table_at_stream_ratio": "COPY (SELECT * FROM audit.table_at(...)) TO STDOUT, same run",
    "watch_changes_per_s": "absolute",
    "watch_lag_ms_p95": "absolute",
    "watch_capture_tps_ratio": "audited, no watcher running, same run",
    "watch_capture_tps_ratio_range": "audited, no watcher running, same run",
    "guard_cost_us": _GUARD,
    "guard_cost_us_range": _GUARD,
    "guard_never_guarded_delta_us": _GUARD,
    "report_s": "absolute",
    "report_bytes": "absolute",
    "history_archive_ms": "absolute (over archived_changes archived changes)",
    "history_archive_actor_month_jsonl_ms": "absolute (over archived_changes archived changes)",
    "row_at_archive_ms": "absolute (over archived_changes archived changes)",
    "blame_archive_ms": "absolute (over archived_changes archived changes)",
}


def render_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``metric, value, target, status, compared_with`` (:data:`TABLE_COLUMNS`) for
    ``--format table``: the ratios with their targets first, then storage, raw medians, the
    run's parameters and the notes."""
    rows = [
        _metric_row(
            key, result.get(key), result.get(FLOOR_KEYS[key]) if key in FLOOR_KEYS else None
        )
        for key in RESULT_KEYS
        if key not in ("settings", "notes")
    ]
    settings = result.get("settings") or {}
    rows.extend(_metric_row(f"setting {name}", value) for name, value in settings.items())
    rows.extend(_metric_row("note", note) for note in result.get("notes") or [])
    return rows


def _metric_row(metric: str, value: Any, floor: Any = None) -> dict[str, Any]:
    """``floor``: for a ratio with a target, the ratio of a bare JSONB log alone (see the notes
    and FLOOR_KEYS)."""
    target = TARGETS.get(metric)
    status = ""
    if target is not None:
        status = "not measured" if value is None else _verdict(float(value), *target)
        if status == "missed" and floor is not None and _verdict(float(floor), *target) != "ok":
            status = f"missed (out of reach: {_floor_text(floor, target[0])})"
    return {
        "metric": metric,
        "value": value,
        "target": f"{target[0]} {target[1]}" if target else None,
        "status": status,
        "compared_with": COMPARED_WITH.get(metric),
    }


def _verdict(value: float, comparison: str, bound: float) -> str:
    ok = value <= bound if comparison == "<=" else value >= bound
    return "ok" if ok else "missed"


def _floor_text(floor: Any, comparison: str) -> str:
    """What a bare JSONB log alone reaches: a time ratio (``<=`` targets) as ``8.4x``, a TPS
    ratio (``>=`` targets) as a share of the unaudited TPS."""
    unit = "x" if comparison == "<=" else " of the unaudited TPS"
    return f"a bare JSONB log alone is {floor}{unit}"
