"""Figures from repeated measurements: medians, ratios of medians, percentiles, rounding."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """Per-repetition measurements, by name (``insert_plain_ms``, ``single_row_audited_tps``)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None

    def ratio(self, num: str, *denominators: str) -> float | None:
        """Median of the per-repetition ratios num / sum(denominators)."""
        tops = self.values.get(num, [])
        bottoms = [self.values.get(d, []) for d in denominators]
        ratios = [
            top / total
            for i, top in enumerate(tops)
            if (total := sum(b[i] for b in bottoms if i < len(b))) > 0
        ]
        return statistics.median(ratios) if ratios else None


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile: the smallest value with ``percent``% of the values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def rounded(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)
