"""The bench result for people: one row per metric, with its target and verdict."""

from __future__ import annotations

from typing import Any

from pgaudit_tool.bench.config import FLOOR_KEYS, RESULT_KEYS, TARGETS


def render_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``metric, value, target, status`` for ``--format table``: the ratios with their
    targets first, then storage, raw medians, the run's parameters and the notes."""
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
    }


def _verdict(value: float, comparison: str, bound: float) -> str:
    ok = value <= bound if comparison == "<=" else value >= bound
    return "ok" if ok else "missed"


def _floor_text(floor: Any, comparison: str) -> str:
    """What a bare JSONB log alone reaches: a time ratio (``<=`` targets) as ``8.4x``, a TPS
    ratio (``>=`` targets) as a share of the unaudited TPS."""
    unit = "x" if comparison == "<=" else " of the unaudited TPS"
    return f"a bare JSONB log alone is {floor}{unit}"
