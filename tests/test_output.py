"""Tests of pgaudit_tool.output: every format round-trips, streams, and stays valid."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wcwidth import wcswidth

from pgaudit_tool import output
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.output import (
    FORMATS,
    TABLE_CHUNK,
    TABLE_MAX_WIDTH,
    TableLayout,
    render,
    to_json_value,
)

TZ = timezone(timedelta(hours=5, minutes=30))


def sample_records() -> list[dict[str, Any]]:
    """Records exercising every tricky value type."""
    return [
        {
            "id": 1,
            "changed_at": datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=TZ),
            "amount": Decimal("1.10"),
            "ratio": float("nan"),
            "note": None,
            "row": {"name": "Zoë", "tags": ["a", "b"], "inner": {"x": 1}},
            "who": "Ünïcødé 日本語 ✓",
        },
        {
            "id": 2,
            "changed_at": datetime(2024, 3, 2, 0, 0, tzinfo=UTC),
            "amount": Decimal("-0.000001"),
            "ratio": 0.25,
            "note": 'line1\nline2, "quoted"',
            "row": {},
            "who": "",
        },
    ]


#: What every record above becomes once converted to JSON values.
EXPECTED_JSON = [
    {
        "id": 1,
        "changed_at": "2024-03-01T07:00:45.123456+00:00",  # every time printed is UTC
        "amount": Decimal("1.10"),
        "ratio": "NaN",
        "note": None,
        "row": {"name": "Zoë", "tags": ["a", "b"], "inner": {"x": 1}},
        "who": "Ünïcødé 日本語 ✓",
    },
    {
        "id": 2,
        "changed_at": "2024-03-02T00:00:00+00:00",
        "amount": Decimal("-0.000001"),
        "ratio": 0.25,
        "note": 'line1\nline2, "quoted"',
        "row": {},
        "who": "",
    },
]


def rendered(fmt: str, records: Any, columns: list[str] | None = None) -> tuple[str, int]:
    """Render to a string; return the text and the returned count."""
    out = io.StringIO()
    count = render(records, fmt, out, columns)
    return out.getvalue(), count


def failing_after(n: int, exc: Exception | None = None) -> Iterator[Mapping[str, Any]]:
    """Yield ``n`` records, then raise, like a cursor losing its connection."""
    for i in range(n):
        yield {"id": i, "value": f"v{i}"}
    raise exc or RuntimeError("connection lost")


class FlushRecorder(io.StringIO):
    """A text stream remembering what had been flushed, as a pipe's reader would see it."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = ""

    def flush(self) -> None:
        super().flush()
        self.flushed = self.getvalue()


# --------------------------------------------------------------------------- json


def test_json_round_trip() -> None:
    text, count = rendered("json", sample_records())
    assert count == 2
    assert json.loads(text, parse_float=Decimal) == EXPECTED_JSON


def test_json_empty_is_empty_array() -> None:
    text, count = rendered("json", [])
    assert count == 0
    assert json.loads(text) == []
    assert text.strip() == "[]"


def test_json_one_record_per_line() -> None:
    text, _ = rendered("json", sample_records())
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    assert len(lines) == 4


def test_json_output_never_contains_nan_literal() -> None:
    text, _ = rendered("json", [{"a": float("nan"), "b": float("inf"), "c": -math.inf}])
    # json.loads accepts NaN/Infinity by default; strict parsers do not.
    json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert json.loads(text) == [{"a": "NaN", "b": "Infinity", "c": "-Infinity"}]


# --------------------------------------------------------------------------- jsonl


def test_jsonl_round_trip() -> None:
    text, count = rendered("jsonl", sample_records())
    assert count == 2
    assert [json.loads(line, parse_float=Decimal) for line in text.splitlines()] == EXPECTED_JSON


def test_jsonl_empty_writes_nothing() -> None:
    assert rendered("jsonl", []) == ("", 0)


def test_json_formats_project_given_columns() -> None:
    records = [{"a": 1, "b": 2}, {"b": 3, "c": 4}]
    for fmt in ("json", "jsonl"):
        text, _ = rendered(fmt, records, columns=["b", "a"])
        parsed = json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines()]
        assert parsed == [{"b": 2, "a": 1}, {"b": 3, "a": None}]
        assert list(parsed[0]) == ["b", "a"]


def test_json_formats_keep_whole_records_without_columns() -> None:
    records = [{"a": 1}, {"a": 2, "extra": True}]
    text, _ = rendered("jsonl", records)
    assert [json.loads(x) for x in text.splitlines()] == records


# --------------------------------------------------------------------------- csv


def test_csv_round_trip() -> None:
    text, count = rendered("csv", sample_records())
    assert count == 2
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "changed_at", "amount", "ratio", "note", "row", "who"]
    first, second = rows[1], rows[2]
    assert first == [
        "1",
        "2024-03-01T07:00:45.123456+00:00",
        "1.10",
        "NaN",
        "",
        '{"name":"Zoë","tags":["a","b"],"inner":{"x":1}}',
        "Ünïcødé 日本語 ✓",
    ]
    assert json.loads(first[5]) == EXPECTED_JSON[0]["row"]
    assert second[4] == 'line1\nline2, "quoted"'
    assert second[5] == "{}"
    assert len(rows) == 3


def test_csv_uses_first_record_keys_and_given_columns() -> None:
    records = [{"a": 1, "b": True}, {"b": False, "c": 9}]
    text, _ = rendered("csv", records)
    assert list(csv.reader(io.StringIO(text))) == [["a", "b"], ["1", "true"], ["", "false"]]
    text, _ = rendered("csv", records, columns=["c", "a"])
    assert list(csv.reader(io.StringIO(text))) == [["c", "a"], ["", "1"], ["9", ""]]


def test_csv_empty() -> None:
    assert rendered("csv", []) == ("", 0)
    text, count = rendered("csv", [], columns=["x", "y"])
    assert (text, count) == ("x,y\r\n", 0)


# --------------------------------------------------------------------------- table


def test_table_layout() -> None:
    records = [{"id": 1, "name": "alice", "n": None}, {"id": 22, "name": "bo", "n": 3.5}]
    text, count = rendered("table", records)
    assert count == 2
    assert text.splitlines() == [
        "id | name  | n",
        "---+-------+----",
        " 1 | alice |",
        "22 | bo    | 3.5",
        "(2 rows)",
    ]


def test_table_contains_values_and_row_count() -> None:
    text, _ = rendered("table", sample_records())
    lines = text.splitlines()
    assert lines[-1] == "(2 rows)"
    assert "1.10" in lines[2] and "NaN" in lines[2] and "日本語" in lines[2]
    assert '{"name":"Zoë","tags":["a","b"],"inner":{"x":1}}' in lines[2]
    # Newlines inside values are escaped: one line per record.
    assert "line1\\nline2" in lines[3]
    assert len(lines) == 5


def test_table_columns_aligned() -> None:
    records = [{"k": "x" * n, "v": n} for n in range(1, 30, 7)]
    text, _ = rendered("table", records)
    lines = text.splitlines()[:-1]
    bars = {line.index("|") for line in lines if "|" in line}
    assert len(bars) == 1
    assert lines[1].index("+") in bars


def test_table_truncates_long_cells() -> None:
    text, _ = rendered("table", [{"long": "y" * 500, "wide": "語" * 100}])
    row = text.splitlines()[2]
    long_cell, wide_cell = (c.strip() for c in row.split("|"))
    assert long_cell == "y" * (TABLE_MAX_WIDTH - 1) + "…"
    assert wide_cell.endswith("…")
    assert len(wide_cell[:-1]) * 2 <= TABLE_MAX_WIDTH - 1


def test_table_singular_and_empty() -> None:
    assert rendered("table", [{"a": 1}])[0].splitlines()[-1] == "(1 row)"
    assert rendered("table", []) == ("(0 rows)\n", 0)
    text, _ = rendered("table", [], columns=["a", "bb"])
    assert text.splitlines() == ["a | bb", "--+---", "(0 rows)"]


def test_table_has_no_box_drawing_or_escape_codes() -> None:
    text, _ = rendered("table", sample_records())
    assert "\x1b" not in text
    assert not any(0x2500 <= ord(ch) <= 0x257F for ch in text)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_written_before_iterator_fails(fmt: str) -> None:
    out = io.StringIO()
    n = 7 if fmt != "table" else output.TABLE_CHUNK
    with pytest.raises(RuntimeError, match="connection lost"):
        render(failing_after(n + 3 if fmt == "table" else n), fmt, out)
    text = out.getvalue()
    for i in range(n):
        assert f'"v{i}"' in text or f" v{i}" in text or f",v{i}" in text


def test_jsonl_streams_and_flushes() -> None:
    out = FlushRecorder()
    n = 3 * output.FLUSH_EVERY + 5
    with pytest.raises(RuntimeError):
        render(failing_after(n), "jsonl", out)
    assert [json.loads(x) for x in out.getvalue().splitlines()] == [
        {"id": i, "value": f"v{i}"} for i in range(n)
    ]
    flushed = [json.loads(x) for x in out.flushed.splitlines()]
    assert len(flushed) >= 3 * output.FLUSH_EVERY


def test_json_streams_and_flushes() -> None:
    out = FlushRecorder()
    n = 2 * output.FLUSH_EVERY + 1
    with pytest.raises(RuntimeError):
        render(failing_after(n), "json", out)
    text = out.getvalue()
    assert text.startswith("[\n")
    assert json.loads(text + "\n]") == [{"id": i, "value": f"v{i}"} for i in range(n)]
    assert out.flushed.count('"value"') >= 2 * output.FLUSH_EVERY


def test_csv_streams_and_flushes() -> None:
    out = FlushRecorder()
    n = 2 * output.FLUSH_EVERY + 1
    with pytest.raises(RuntimeError):
        render(failing_after(n), "csv", out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [["id", "value"]] + [[str(i), f"v{i}"] for i in range(n)]
    assert len(list(csv.reader(io.StringIO(out.flushed)))) > 2 * output.FLUSH_EVERY


def test_table_streams_in_chunks() -> None:
    out = FlushRecorder()
    chunk = output.TABLE_CHUNK
    with pytest.raises(RuntimeError):
        render(failing_after(chunk + 10), "table", out)
    lines = out.flushed.splitlines()
    assert len(lines) == 2 + chunk
    assert lines[-1].split("|")[1].strip() == f"v{chunk - 1}"


def test_render_consumes_generator_lazily() -> None:
    pulled = 0

    def gen() -> Iterator[dict[str, int]]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield {"i": i}

    records = gen()
    out = io.StringIO()
    assert render(records, "jsonl", out) == 10_000
    assert pulled == 10_000


def test_unknown_format() -> None:
    with pytest.raises(InvalidInput) as info:
        render([], "xml", io.StringIO())
    assert info.value.hint is not None and "jsonl" in info.value.hint


# --------------------------------------------------------------------------- to_json_value


class Colour(Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (42, 42),
        (1.5, 1.5),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (Decimal("1.10"), Decimal("1.10")),
        (Decimal("12345678901234567890.123456789"), Decimal("12345678901234567890.123456789")),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Infinity"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=TZ), "2024-01-01T21:34:05+00:00"),
        (date(2024, 2, 29), "2024-02-29"),
        (time(23, 59, 1, 500), "23:59:01.000500"),
        (time(8, 0, tzinfo=TZ), "08:00:00+05:30"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"\x00\xab", "\\x00ab"),
        (bytearray(b"\x01"), "\\x01"),
        (memoryview(b"hi"), "\\x6869"),
        (b"", "\\x"),
        (ipaddress.ip_address("192.168.0.1"), "192.168.0.1"),
        (ipaddress.ip_address("::1"), "::1"),
        (ipaddress.ip_interface("10.1.2.3/8"), "10.1.2.3/8"),
        (ipaddress.ip_network("10.0.0.0/8"), "10.0.0.0/8"),
        (timedelta(0), "PT0S"),
        (timedelta(days=1, hours=2, minutes=3, seconds=4.5), "P1DT2H3M4.5S"),
        (timedelta(days=3), "P3D"),
        (timedelta(microseconds=1), "PT0.000001S"),
        (timedelta(hours=-1), "-PT1H"),
        (timedelta(days=-1, seconds=5), "-PT23H59M55S"),
        ((1, "a"), [1, "a"]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (Colour.RED, "red"),
        ({"a": [Decimal("2.0"), {"b": b"\x01"}]}, {"a": [Decimal("2.0"), {"b": "\\x01"}]}),
        ({1: "x", None: "y", date(2024, 1, 1): "z"}, {"1": "x", "null": "y", "2024-01-01": "z"}),
    ],
)
def test_to_json_value(value: Any, expected: Any) -> None:
    assert to_json_value(value) == expected


def test_to_json_value_unsortable_set_still_converts() -> None:
    assert sorted(map(str, to_json_value({1, "a"}))) == ["1", "a"]


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
records_strategy = st.lists(st.dictionaries(st.text(min_size=1), json_values, max_size=4))


@given(records_strategy)
def test_json_formats_always_valid(records: list[dict[str, Any]]) -> None:
    def strict(c: str) -> Any:
        raise AssertionError(f"invalid JSON constant {c}")

    text, count = rendered("json", records)
    assert count == len(records)
    assert len(json.loads(text, parse_constant=strict)) == len(records)
    text, _ = rendered("jsonl", records)
    # Only "\n" ends a JSON Lines record (str.splitlines would also split on U+2028 etc.).
    lines = text.split("\n")
    assert lines.pop() == ""
    assert len([json.loads(x, parse_constant=strict) for x in lines]) == len(records)


@given(records_strategy)
def test_csv_and_table_row_counts(records: list[dict[str, Any]]) -> None:
    text, _ = rendered("csv", records)
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == (len(records) + 1 if records else 0)
    text, _ = rendered("table", records)
    lines = text.splitlines()
    assert lines[-1].startswith(f"({len(records)} row")
    assert len(lines) == (len(records) + 3 if records else 1)


# --------------------------------------------------------------------------- people's tables


def _table(records: list[dict[str, Any]], layout: TableLayout) -> list[str]:
    out = io.StringIO()
    render(records, "table", out, None, layout)
    return out.getvalue().splitlines()


def test_widths_never_change_mid_stream() -> None:
    """The first chunk sizes the columns; a longer cell later is cut to them, so every line
    of a long listing lines up with the header."""
    records = [{"id": i, "note": "short"} for i in range(TABLE_CHUNK)]
    records.append({"id": TABLE_CHUNK, "note": "a much longer note than any before it"})
    lines = _table(records, TableLayout())
    assert {line.index("|") for line in lines[:-1] if "|" in line} == {4}
    assert lines[1] == "----+------"
    assert lines[-2] == "500 | a mu…"


def test_a_table_fits_the_width_it_is_given() -> None:
    """Wide columns narrow (the widest first, never below 8 or their header) to fit."""
    records = [{"id": 1, "old": "x" * 50, "new": "y" * 50, "who": "alice"}]
    lines = _table(records, TableLayout(width=80, expanded=False))
    assert all(wcswidth(line) <= 80 for line in lines[:-1])
    assert "alice" in lines[2] and "…" in lines[2]
    assert max(len(line) for line in _table(records, TableLayout())) > 100  # no width, no cut


def test_expanded_when_asked_or_when_rows_are_too_wide() -> None:
    records = [{"id": 1, "changes": "amount: 1.00 -> 2.00", "who": "Zoë 日本"}, {"id": 2}]
    expanded = _table(records, TableLayout(width=200, expanded=True))
    assert expanded[0].startswith("-[ RECORD 1 ]") and "-[ RECORD 2 ]" in expanded[4]
    assert expanded[1:4] == ["id      | 1", "changes | amount: 1.00 -> 2.00", "who     | Zoë 日本"]
    assert _table(records, TableLayout(width=200, expanded=None))[0].startswith("id ")
    assert _table(records, TableLayout(width=20, expanded=None))[0].startswith("-[ RECORD 1 ]")
    assert _table([], TableLayout(width=20, expanded=True)) == ["(0 rows)"]
