"""Listings written by the server (issue 14): history and table-at as csv, json and jsonl.

The invariants: what the server writes reads back as what the Python API returns (history), a
table-at csv loads back with COPY FROM into exactly the rows audit.table_at gives, every time is
UTC whatever the session's zone, and the session's settings are left as they were.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.errors import InvalidInput

#: Columns of every kind the forms differ on: text that needs quoting, numbers that must stay
#: exact, times, intervals, arrays, bytea, json with line breaks, NULLs.
#: The table's name: a space and quotes in it.
T = '"Odd ""T"""'
_TABLE = f"""
CREATE TABLE {T} (
    id int PRIMARY KEY,
    note text,
    amount numeric(20,6),
    ratio float8,
    at timestamptz,
    span interval,
    tags text[],
    raw bytea,
    doc json,
    flag boolean
)
"""
_ROWS = [
    (3, 'line1\nline2, "quoted"; back\\slash', Decimal("12345678901234.000100"), 0.1,
     "2024-03-01 12:30:45.123456+05:30", "1 day 02:03:04", ["a", "b,c", None], b"\x00\xff",
     '{"k": [1,\n 2],\n "s": "x\\ny"}', True),
    (1, "Ünïcødé 日本語 ✓", Decimal("-0.000001"), float("nan"), "2024-01-01 00:00:00+00",
     "-3 hours", [], b"", "null", False),
    (2, None, None, None, None, None, None, None, None, None),
]  # fmt: skip


def export(fn: Any, *args: Any, **kwargs: Any) -> str:
    out = io.BytesIO()
    fn(out, *args, **kwargs)
    return out.getvalue().decode()


@pytest.fixture
def odd(audit: Audit) -> Audit:
    conn = audit.conn
    conn.execute(_TABLE)
    audit.enable(T)
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {T} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", _ROWS)
    conn.execute(f"UPDATE {T} SET amount = amount * 2, note = note || '!' WHERE id = 3")
    conn.execute(f"DELETE FROM {T} WHERE id = 2")
    return audit


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_history_json_reads_back_as_the_api_gives_it(odd: Audit, fmt: str) -> None:
    """Every change, every column: numbers exact, keys in the listing's order, times UTC."""
    odd.conn.execute("SET TimeZone = 'America/St_Johns'")  # -03:30: no UTC by accident
    text = export(odd.export_history, fmt, T)
    if fmt == "json":
        records = json.loads(text, parse_float=Decimal)
        assert text.startswith("[\n") and text.endswith("\n]\n")
    else:
        records = [json.loads(line, parse_float=Decimal) for line in text.splitlines()]
    expected = list(odd.history(T))
    assert len(records) == len(expected) == 5
    for got, want in zip(records, expected, strict=True):
        assert list(got) == list(want)  # column order
        assert {k: got[k] for k in ("id", "op", "pk", "old", "new", "changed", "txid")} == {
            k: want[k] for k in ("id", "op", "pk", "old", "new", "changed", "txid")
        }
        assert datetime.fromisoformat(got["at"]) == want["at"]
        assert got["at"].endswith("+00:00")
    assert records[0]["new"]["amount"] == Decimal("12345678901234.000100")
    assert odd.conn.execute("SHOW TimeZone").fetchone() == ("America/St_Johns",)


def test_history_csv_is_copy_csv(odd: Audit) -> None:
    """A header, then COPY's csv: JSON columns as the server's JSON text, times UTC."""
    text = export(odd.export_history, "csv", T)
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = list(odd.history(T))
    assert [int(r["id"]) for r in rows] == [c["id"] for c in expected]
    for got, want in zip(rows, expected, strict=True):
        for column in ("pk", "old", "new"):
            value = json.loads(got[column], parse_float=Decimal) if got[column] else None
            assert value == want[column]
        assert got["at"].endswith("+00")
    assert text.count("\n") > len(rows)  # a quoted line break stays inside its field


def test_empty_listings(odd: Audit) -> None:
    assert export(odd.export_history, "json", None, actor="nobody") == "[]\n"
    assert export(odd.export_history, "jsonl", None, actor="nobody") == ""
    assert export(odd.export_history, "csv", None, actor="nobody").count("\n") == 1


def test_table_at_csv_loads_back_with_copy(odd: Audit) -> None:
    """The csv of table-at is COPY's: loaded back with COPY FROM it is exactly the rows
    audit.table_at gives, in key order, at an instant before and after the changes."""
    conn = odd.conn
    conn.execute("SET TimeZone = 'Asia/Kathmandu'")
    conn.execute(f"CREATE TABLE copy_back (LIKE {T})")
    for at in (_now(conn), "now"):
        text = export(odd.export_table_at, "csv", T, at)
        assert text.splitlines()[0] == "id,note,amount,ratio,at,span,tags,raw,doc,flag"
        conn.execute("TRUNCATE copy_back")
        with conn.cursor() as cur, cur.copy("COPY copy_back FROM STDIN (FORMAT csv, HEADER)") as cp:
            cp.write(text.encode())
        instant = _now(conn) if at == "now" else at
        rebuilt = sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {})").format(
            sql.Identifier('Odd "T"'), sql.Literal(instant)
        )
        for a, b in ((sql.SQL("TABLE copy_back"), rebuilt), (rebuilt, sql.SQL("TABLE copy_back"))):
            # json has no equality operator: compare rows as text.
            diff = conn.execute(
                sql.SQL(
                    "SELECT x::text FROM ({}) AS x EXCEPT ALL SELECT y::text FROM ({}) AS y"
                ).format(a, b)
            ).fetchall()
            assert diff == []
        ids = [int(line.split(",", 1)[0]) for line in text.splitlines()[1:] if line[:1].isdigit()]
        assert ids == sorted(ids)
    assert "+00" in text and "+05:45" not in text  # UTC, not the session's zone


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_table_at_json_has_one_object_per_line(odd: Audit, fmt: str) -> None:
    """A json (not jsonb) value keeps its line breaks in the table; the listing does not."""
    text = export(odd.export_table_at, fmt, T, "now")
    lines = text.splitlines()
    objects = lines if fmt == "jsonl" else [ln.rstrip(",") for ln in lines[1:-1]]
    rows = [json.loads(o, parse_float=Decimal) for o in objects]
    assert [r["id"] for r in rows] == [1, 3]
    assert rows[1]["doc"] == {"k": [1, 2], "s": "x\ny"}
    assert rows[1]["amount"] == Decimal("24691357802468.000200")
    assert rows[1]["span"] == "P1DT2H3M4S"
    assert rows[1]["tags"] == ["a", "b,c", None]
    assert rows[0]["ratio"] == "NaN"


def test_export_refuses_other_formats_and_changes_nothing(odd: Audit) -> None:
    with pytest.raises(InvalidInput, match="Unknown output format"):
        export(odd.export_history, "xml", None)
    before = odd.conn.execute("SHOW DateStyle").fetchone()
    export(odd.export_history, "csv", None)
    assert odd.conn.execute("SHOW DateStyle").fetchone() == before
