"""The bench result for people: one row per metric, with its target and verdict."""

from __future__ import annotations

from typing import Any

from pgaudit_tool.bench.config import RESULT_KEYS, TARGETS


def render_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``metric, value, target, status`` for ``--format table``: the ratios with their
    targets first, then storage, raw medians, the run's parameters and the notes."""
    rows = [
        _metric_row(key, result.get(key), result.get(key.replace("_ratio", "_floor_ratio")))
        for key in RESULT_KEYS
        if key not in ("settings", "notes")
    ]
    settings = result.get("settings") or {}
    rows.extend(_metric_row(f"setting {name}", value) for name, value in settings.items())
    rows.extend(_metric_row("note", note) for note in result.get("notes") or [])
    return rows


def _metric_row(metric: str, value: Any, floor: Any = None) -> dict[str, Any]:
    """``floor``: for a bulk ratio, the ratio of a bare JSONB log alone (see the notes)."""
    target = TARGETS.get(metric)
    status = ""
    if target is not None:
        status = "not measured" if value is None else _verdict(float(value), *target)
        if status == "missed" and floor is not None and _verdict(float(floor), *target) != "ok":
            status = f"missed (out of reach: a bare JSONB log alone is {floor}x)"
    return {
        "metric": metric,
        "value": value,
        "target": f"{target[0]} {target[1]}" if target else None,
        "status": status,
    }


def _verdict(value: float, comparison: str, bound: float) -> str:
    ok = value <= bound if comparison == "<=" else value >= bound
    return "ok" if ok else "missed"
