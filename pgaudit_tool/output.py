"""Rendering of listing results for the CLI: ``--format table|csv|json|jsonl``.

Every format streams: records are written as they arrive (they may come from a server-side
cursor producing millions of rows) and the stream is flushed regularly. ``table`` buffers at
most :data:`TABLE_CHUNK` rows at a time to size its columns.

Value conversions (see :func:`to_json_value`), identical in every format:

* ``datetime``/``date``/``time`` -> ISO-8601 text; an aware ``datetime`` in UTC
  (``+00:00``), whatever zone it came in: every time the tool prints is UTC.
* ``Decimal`` -> a JSON number written with its exact digits (``Decimal("1.10")`` -> ``1.10``):
  PostgreSQL ``numeric`` values and every number inside a JSONB image keep their precision and
  scale (read them with ``json.loads(text, parse_float=decimal.Decimal)``). ``NaN`` and the
  infinities, which JSON numbers cannot express, give the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``. In csv and table cells a decimal is its exact text.
* ``float`` NaN and infinities -> the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
  (PostgreSQL's spelling); JSON has no such numbers and the output is always valid JSON.
  Finite floats stay numbers.
* ``bytes``/``bytearray``/``memoryview`` -> PostgreSQL's bytea hex text, ``"\\x0a0b"``.
* ``timedelta`` -> ISO-8601 duration, e.g. ``"P1DT2H3M4.5S"``, ``"PT0S"``, ``"-PT1H"``.
* ``UUID``, IP addresses/networks/interfaces and any other object -> ``str(value)``;
  ``Enum`` -> its value.
* sets -> sorted lists (when sortable); tuples -> lists; dicts and lists are converted
  recursively, non-string dict keys become strings.
* :class:`~pgaudit_tool.jsonsafe.RawJson` (a JSON value read from the database nested too
  deeply to decode) -> its JSON text, verbatim, in every format.
* A value nested too deeply to convert (deeper than Python's recursion allows) raises
  :class:`~pgaudit_tool.errors.InvalidInput`, never RecursionError; values read from the
  database never are (see :mod:`pgaudit_tool.jsonsafe`).

Per format:

* ``json``: one JSON array, one record per line; ``[]`` when there are no records.
* ``jsonl``: one JSON object per line.
* ``csv``: RFC 4180: header row, ``\\r\\n`` line ends (Python 3.11's csv module would leave a
  lone ``\\r`` unquoted with ``\\n`` line ends), nested values as compact JSON, ``None`` as an empty
  field (indistinguishable from an empty string), booleans as ``true``/``false``.
* ``table``: aligned plain text in the style of psql, numbers right-aligned, nested values as
  compact JSON, control characters escaped (``\\n``), cells longer than
  :data:`TABLE_MAX_WIDTH` truncated with ``…``, ``None`` as an empty cell, ``(N rows)`` last.

Columns: when ``columns`` is None, ``table`` and ``csv`` use the keys of the first record (in
order) for every row; ``json`` and ``jsonl`` then write each record whole. When ``columns`` is
given, every format writes exactly those keys (missing ones as null), in that order.
"""

from __future__ import annotations

import csv
import json
import math
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from itertools import chain, islice
from typing import Any, TextIO

from wcwidth import wcwidth

from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.jsonsafe import RawJson

__all__ = [
    "FORMATS",
    "TABLE_CHUNK",
    "TABLE_MAX_WIDTH",
    "TableLayout",
    "render",
    "to_json_text",
    "to_json_value",
]

FORMATS = ("table", "csv", "json", "jsonl")

#: Longest cell (in terminal columns) printed by the table format, ellipsis included.
TABLE_MAX_WIDTH = 60
#: Rows buffered by the table format to compute column widths.
TABLE_CHUNK = 500
#: Flush the output after this many records or this many seconds, whichever comes first.
FLUSH_EVERY = 100
FLUSH_INTERVAL = 0.5

_ELLIPSIS = "…"
_MICROS_PER = (
    ("D", 86_400_000_000),
    ("H", 3_600_000_000),
    ("M", 60_000_000),
)
_CONTROL_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}

Records = Iterator[Mapping[str, Any]]


# --------------------------------------------------------------------------- conversions


def to_json_value(v: Any) -> Any:
    """Convert ``v`` to plain JSON-compatible Python data (see the module docstring)."""
    if isinstance(v, Enum):
        return to_json_value(v.value)
    if isinstance(v, RawJson):
        return v
    if v is None or isinstance(v, str | bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else _float_text(v)
    if isinstance(v, Mapping):
        return {_json_key(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [to_json_value(x) for x in v]
    if isinstance(v, set | frozenset):
        return _sorted_if_possible([to_json_value(x) for x in v])
    return _scalar_to_json(v)


def _scalar_to_json(v: Any) -> Any:
    """Convert a non-container, non-primitive value to a JSON-compatible one."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).isoformat()  # one zone for every time printed: UTC
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, Decimal):
        if v.is_finite():
            return v
        return "NaN" if v.is_nan() else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, timedelta):
        return _iso_duration(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    return str(v)


def _float_text(v: float) -> str:
    """Spell a non-finite float the way PostgreSQL does."""
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def _json_key(k: Any) -> str:
    """Turn a dict key into a JSON object key (a string)."""
    if isinstance(k, str):
        return k
    converted = to_json_value(k)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _sorted_if_possible(items: list[Any]) -> list[Any]:
    """Sort a converted set for deterministic output; keep arbitrary order if unsortable."""
    try:
        return sorted(items)
    except TypeError:
        return items


def _iso_duration(td: timedelta) -> str:
    """Format a timedelta as an ISO-8601 duration with a leading ``-`` when negative."""
    micros = td // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    parts: dict[str, int] = {}
    for unit, size in _MICROS_PER:
        parts[unit], micros = divmod(micros, size)
    seconds, micros = divmod(micros, 1_000_000)
    day_part = f"{parts['D']}D" if parts["D"] else ""
    time_part = "".join(f"{parts[u]}{u}" for u in ("H", "M") if parts[u])
    if seconds or micros:
        fraction = f".{micros:06d}".rstrip("0") if micros else ""
        time_part += f"{seconds}{fraction}S"
    if not day_part and not time_part:
        return "PT0S"
    return f"{sign}P{day_part}" + (f"T{time_part}" if time_part else "")


def to_json_text(v: Any, *, compact: bool = False) -> str:
    """One value as JSON text, with the conversions of :func:`to_json_value` (exact decimals);
    ``compact``: without spaces after ``,`` and ``:``."""
    return _dumps(v, compact=compact)


def _dumps(v: Any, *, compact: bool = False) -> str:
    """Serialize to JSON text; decimals as exact numbers, never NaN/Infinity literals."""
    try:
        return _encode(to_json_value(v), (",", ":") if compact else (", ", ": "))
    except RecursionError:
        raise InvalidInput(
            "a value is nested too deeply to write as JSON",
            hint="Wrap it in pgaudit_tool.jsonsafe.RawJson (its JSON text), written verbatim.",
        ) from None


def _encode(v: Any, seps: tuple[str, str]) -> str:
    """JSON text of converted data (see :func:`to_json_value`), writing Decimal digits as is."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, RawJson):
        return v.text
    if isinstance(v, dict):
        items = (
            json.dumps(k, ensure_ascii=False) + seps[1] + _encode(x, seps) for k, x in v.items()
        )
        return "{" + seps[0].join(items) + "}"
    if isinstance(v, list):
        return "[" + seps[0].join(_encode(x, seps) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def _text(v: Any) -> str:
    """Render one value as text for csv and table cells."""
    if v is None:
        return ""
    if isinstance(v, str) and not isinstance(v, Enum):
        return v
    converted = to_json_value(v)
    if isinstance(converted, str):
        return converted
    return _dumps(converted, compact=True)


# --------------------------------------------------------------------------- streaming


class _Flusher:
    """Flush ``out`` every :data:`FLUSH_EVERY` records or :data:`FLUSH_INTERVAL` seconds."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pending = 0
        self.last = _time.monotonic()

    def tick(self, count: int = 1) -> None:
        """Record that ``count`` records were written; flush if due."""
        self.pending += count
        now = _time.monotonic()
        if self.pending >= FLUSH_EVERY or now - self.last >= FLUSH_INTERVAL:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Flush the stream now."""
        self.out.flush()
        self.pending = 0
        self.last = _time.monotonic() if now is None else now


def _project(record: Mapping[str, Any], columns: Sequence[str] | None) -> Mapping[str, Any]:
    """Keep ``columns`` (in order, missing ones as None), or the whole record if None."""
    if columns is None:
        return record
    return {c: record.get(c) for c in columns}


def _peek_columns(
    records: Records, columns: Sequence[str] | None
) -> tuple[Sequence[str] | None, Records]:
    """Determine the columns, from the first record if needed, without losing it."""
    if columns is not None:
        return columns, records
    first = next(records, None)
    if first is None:
        return None, iter(())
    return list(first.keys()), chain((first,), records)


# --------------------------------------------------------------------------- formats


def _render_jsonl(records: Records, out: TextIO, columns: Sequence[str] | None) -> int:
    """Write one JSON object per line."""
    flusher = _Flusher(out)
    count = 0
    for record in records:
        out.write(_dumps(_project(record, columns)) + "\n")
        count += 1
        flusher.tick()
    flusher.flush()
    return count


def _render_json(records: Records, out: TextIO, columns: Sequence[str] | None) -> int:
    """Write a JSON array, one record per line, streaming."""
    flusher = _Flusher(out)
    count = 0
    for record in records:
        out.write(",\n" if count else "[\n")
        out.write(_dumps(_project(record, columns)))
        count += 1
        flusher.tick()
    out.write("\n]\n" if count else "[]\n")
    flusher.flush()
    return count


def _render_csv(records: Records, out: TextIO, columns: Sequence[str] | None) -> int:
    """Write a header row then one CSV row per record."""
    columns, records = _peek_columns(records, columns)
    if columns is None:
        return 0
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    flusher = _Flusher(out)
    count = 0
    for record in records:
        writer.writerow([_text(record.get(c)) for c in columns])
        count += 1
        flusher.tick()
    flusher.flush()
    return count


@dataclass(frozen=True)
class TableLayout:
    """How the table format fits a screen: ``width`` in columns (None: no limit, as when the
    output is not a terminal); ``expanded`` True for one line per column of each record (psql's
    ``\\x``), None for that only when a record would be wider than ``width``."""

    width: int | None = None
    expanded: bool | None = False


def _render_table(
    records: Records,
    out: TextIO,
    columns: Sequence[str] | None,
    layout: TableLayout = TableLayout(),
) -> int:
    """Write an aligned text table; the first chunk of rows sizes the columns for good."""
    columns, records = _peek_columns(records, columns)
    count = 0
    if columns is not None:
        header = [_cell(c) for c in columns]
        chunk = list(islice(records, TABLE_CHUNK))
        rows = [[_cell(record.get(c)) for c in columns] for record in chunk]
        widths = [max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(header)]
        if (_too_wide(widths, layout.width) and layout.expanded is None) or layout.expanded:
            return _render_expanded(chain(chunk, records), out, columns, layout.width)
        widths = _fit(widths, [_width(h) for h in header], layout.width)
        _write_table_row(out, header, widths, [False] * len(widths))
        out.write(_separator(widths))
        # Widths never change after the first chunk: later cells are cut to them.
        while chunk:
            for record, row in zip(chunk, rows, strict=True):
                cut = [_truncate(cell, w) for cell, w in zip(row, widths, strict=True)]
                _write_table_row(out, cut, widths, [_is_number(record.get(c)) for c in columns])
            count += len(chunk)
            out.flush()
            chunk = list(islice(records, TABLE_CHUNK))
            rows = [[_cell(record.get(c)) for c in columns] for record in chunk]
    out.write(f"({count} {'row' if count == 1 else 'rows'})\n")
    out.flush()
    return count


def _too_wide(widths: list[int], limit: int | None) -> bool:
    return limit is not None and sum(widths) + 3 * (len(widths) - 1) > limit


def _fit(widths: list[int], least: list[int], limit: int | None) -> list[int]:
    """Narrow the widest columns (not below their header, nor 8) until the line fits."""
    widths = list(widths)
    while _too_wide(widths, limit):
        i = max(range(len(widths)), key=lambda j: widths[j])
        if widths[i] <= max(8, least[i]):
            break
        widths[i] -= 1
    return widths


def _render_expanded(
    records: Iterable[Mapping[str, Any]], out: TextIO, columns: Sequence[str], limit: int | None
) -> int:
    """One block per record, one line per column, as psql's expanded mode."""
    labels = [_cell(c) for c in columns]
    label_width = max(_width(label) for label in labels)
    room = None if limit is None else max(8, limit - label_width - 3)
    count = 0
    for record in records:
        count += 1
        head = f"-[ RECORD {count} ]"
        head += "-" * max(0, label_width + 1 - len(head))
        out.write(head + "+" + "-" * max(1, label_width + 2 + (room or 20) - len(head)) + "\n")
        for label, column in zip(labels, columns, strict=True):
            value = printable(_text(record.get(column)))
            if room is not None:
                value = _truncate(value, room)
            out.write((_pad(label, label_width, False) + " | " + value).rstrip() + "\n")
        if count % FLUSH_EVERY == 0:
            out.flush()
    if not count:
        out.write("(0 rows)\n")
    out.flush()
    return count


def _write_table_row(out: TextIO, cells: list[str], widths: list[int], right: list[bool]) -> None:
    """Write one padded table line, without trailing spaces."""
    padded = [_pad(c, w, r) for c, w, r in zip(cells, widths, right, strict=True)]
    out.write(" | ".join(padded).rstrip() + "\n")


def _separator(widths: list[int]) -> str:
    """The line between the header and the rows."""
    return "-+-".join("-" * w for w in widths) + "\n"


def _is_number(v: Any) -> bool:
    """Numbers are right-aligned, as in psql."""
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): names and values a
    writer chose cannot move the cursor or recolour a reviewer's terminal."""
    return text.translate(_CONTROL_ESCAPES)


def _cell(v: Any) -> str:
    """A single-line, width-limited table cell."""
    return _truncate(_text(v).translate(_CONTROL_ESCAPES), TABLE_MAX_WIDTH)


def _char_width(ch: str) -> int:
    """Terminal columns taken by one character (wide East Asian 2, combining 0), by wcwidth;
    control characters never reach here (escaped first)."""
    return max(0, wcwidth(ch))


def _width(s: str) -> int:
    """Terminal columns taken by ``s``."""
    return len(s) if s.isascii() else sum(_char_width(ch) for ch in s)


def _truncate(s: str, limit: int) -> str:
    """Cut ``s`` to at most ``limit`` columns, ending with an ellipsis when cut."""
    if _width(s) <= limit:
        return s
    kept: list[str] = []
    used = 0
    for ch in s:
        w = _char_width(ch)
        if used + w > limit - 1:
            break
        kept.append(ch)
        used += w
    return "".join(kept) + _ELLIPSIS


def _pad(s: str, width: int, right: bool) -> str:
    """Pad ``s`` with spaces to ``width`` columns."""
    fill = " " * (width - _width(s))
    return fill + s if right else s + fill


_RENDERERS: dict[str, Callable[[Records, TextIO, Sequence[str] | None], int]] = {
    "csv": _render_csv,
    "json": _render_json,
    "jsonl": _render_jsonl,
}


def render(
    records: Iterable[Mapping[str, Any]],
    fmt: str,
    out: TextIO,
    columns: Sequence[str] | None = None,
    layout: TableLayout = TableLayout(),
) -> int:
    """Write ``records`` to ``out`` in format ``fmt``; return the number of records written.

    ``layout``: how the table format fits the screen (other formats ignore it). Raises
    :class:`~pgaudit_tool.errors.InvalidInput` for an unknown format. If the records
    iterator raises, the records before it have already been written and the exception
    propagates (json output is then an unterminated array).
    """
    if fmt == "table":
        return _render_table(iter(records), out, columns, layout)
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise InvalidInput(
            f"Unknown output format {fmt!r}.", hint=f"Choose one of: {', '.join(FORMATS)}."
        )
    return renderer(iter(records), out, columns)
