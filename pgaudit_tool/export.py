"""Listings rendered by the server, at the speed of COPY: ``csv``, ``json`` and ``jsonl``.

What the log holds is JSON already, exact to the last digit; decoding it into Python objects
and encoding it again cost ten times what the query does. Here the server writes the text:

* ``csv``: ``COPY (...) TO STDOUT (FORMAT csv, HEADER)``, passed through byte for byte: a
  header row, ``\\n`` line ends, quotes where needed, NULL as an empty field, every value in
  PostgreSQL's text form (``t``/``f``, arrays as ``{1,2}``, JSON as its text), so that
  ``\\copy ... FROM ... (FORMAT csv, HEADER)`` loads it back;
* ``jsonl``: one ``row_to_json`` object per line, keys in column order, values in
  PostgreSQL's JSON forms (numbers exact, times ISO-8601); a table with a column of a type
  whose owner is not trusted (it could have made a cast to json, code that would run with the
  reader's rights) is written as its JSONB image instead (``audit._image_sql``: no cast runs,
  keys in jsonb's order);
* ``json``: the same objects as one array, one per line.

Times are written in UTC whatever the session's time zone (see :data:`OUTPUT_SETTINGS`), as
every other output of the tool; the settings return to their values afterwards.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

import psycopg
from psycopg import sql

from pgaudit_tool.db import translated_errors
from pgaudit_tool.errors import InvalidInput

__all__ = ["EXPORT_FORMATS", "OUTPUT_SETTINGS", "export", "export_merged", "merged_by_key"]

_T = TypeVar("_T")

EXPORT_FORMATS = ("csv", "json", "jsonl")

#: Settings of the exporting transaction: times in UTC and ISO-8601 (intervals too), floats
#: exact, bytea in hex, whatever the session says.
OUTPUT_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

_BATCH = 5000


#: The JSON of a row ``x`` when every column's type is built in or trusted (no cast to json a
#: table owner wrote can run): keys in column order.
ROW_TO_JSON = sql.SQL("pg_catalog.row_to_json(x)")


def export(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    order: sql.Composable,
    fmt: str,
    out: BinaryIO,
    json_row: sql.Composable = ROW_TO_JSON,
) -> None:
    """Write the rows of ``query`` (ordered by ``order``, which names them ``x``) to ``out``;
    ``json_row``: the JSON of a row ``x`` for json and jsonl (:data:`ROW_TO_JSON` unless a
    column's type could bring a cast of its owner's, see ``audit._image_sql``).

    Runs in a transaction of its own (a savepoint inside the caller's), which leaves the
    session's settings as they were.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(
            f"Unknown output format {fmt!r}.", hint=f"Choose one of: {', '.join(EXPORT_FORMATS)}."
        )
    rows = sql.SQL("SELECT * FROM ({}) AS x ORDER BY {}").format(query, order)
    with translated_errors(), conn.transaction(), _settings(conn):
        if fmt == "csv":
            _copy_csv(conn, rows, out)
        else:
            _json_lines(conn, rows, json_row, out, array=fmt == "json")
    out.flush()


@contextmanager
def _settings(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """SET LOCAL the output settings; put back the caller's values when done (a savepoint
    alone keeps SET LOCAL values until its top transaction ends)."""
    saved = conn.execute(
        "SELECT pg_catalog.current_setting(n) FROM pg_catalog.unnest(%s::text[]) WITH ORDINALITY AS u(n, i)"
        " ORDER BY u.i",
        (list(OUTPUT_SETTINGS),),
    ).fetchall()
    _set_local(conn, list(OUTPUT_SETTINGS), list(OUTPUT_SETTINGS.values()))
    yield
    _set_local(conn, list(OUTPUT_SETTINGS), [str(v) for (v,) in saved])


def _set_local(conn: psycopg.Connection[Any], names: list[str], values: list[str]) -> None:
    """Set each setting for the transaction, in one statement."""
    conn.execute(
        "SELECT pg_catalog.set_config(n, v, true) FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS u(n, v)",
        (names, values),
    )


def _copy_csv(conn: psycopg.Connection[Any], rows: sql.Composable, out: BinaryIO) -> None:
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(rows)
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for data in copy:
            out.write(data)


def _json_lines(
    conn: psycopg.Connection[Any],
    rows: sql.Composable,
    json_row: sql.Composable,
    out: BinaryIO,
    *,
    array: bool,
) -> None:
    query = sql.SQL("SELECT ({})::text FROM ({}) AS x").format(json_row, rows)
    with conn.cursor(name="pgaudit_export") as cur:
        cur.itersize = _BATCH
        cur.execute(query)
        _write_json((line for (line,) in cur), out, array=array)


def export_merged(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    key: sql.Composable,
    fmt: str,
    out: BinaryIO,
    other: Iterable[tuple[int, str]],
    *,
    limit: int | None = None,
    last: int | None = None,
) -> None:
    """Write, as json or jsonl, the rows of ``query`` (``row_to_json``, ordered by ``key``, an
    integer naming a row ``x``) merged in key order with ``other``: (key, JSON text) pairs in
    key order, rendered as the server renders its own (:mod:`pgaudit_tool.archive_lines`);
    only the first ``limit`` or the ``last`` lines of the merge (each side has at most as many).
    """
    if fmt not in ("json", "jsonl"):
        raise InvalidInput(f"Unknown output format {fmt!r}.", hint="Choose json or jsonl.")
    rows = sql.SQL("SELECT {}, pg_catalog.row_to_json(x)::text FROM ({}) AS x ORDER BY {}").format(
        key, query, key
    )
    with (
        translated_errors(),
        conn.transaction(),
        _settings(conn),
        conn.cursor(name="pgaudit_export") as cur,
    ):
        cur.itersize = _BATCH
        cur.execute(rows)
        lines = merged_by_key(cur, other, limit=limit, last=last)
        _write_json(lines, out, array=fmt == "json")
    out.flush()


def merged_by_key(
    first: Iterable[tuple[int, _T]],
    second: Iterable[tuple[int, _T]],
    *,
    limit: int | None = None,
    last: int | None = None,
) -> Iterable[_T]:
    """The items of two (key, item) streams, each in key order, merged in key order (keys are
    unique across both); only the first ``limit`` or the ``last`` items of the merge."""
    items: Iterable[_T] = (item for _, item in heapq.merge(first, second, key=_first))
    if limit is not None:
        return itertools.islice(items, limit)
    if last is not None:
        return collections.deque(items, maxlen=last)
    return items


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _write_json(lines: Iterable[str], out: BinaryIO, *, array: bool) -> None:
    """JSON texts, one per line (jsonl) or as the items of one array (json)."""
    separator = ",\n" if array else "\n"
    first = True
    items = iter(lines)
    while batch := list(itertools.islice(items, _BATCH)):
        # A json (not jsonb) value keeps the line breaks it was written with; between
        # tokens (the only place JSON allows them) a space means the same.
        text = separator.join(
            line if "\n" not in line and "\r" not in line else _one_line(line) for line in batch
        )
        if array:
            out.write(b"[\n" if first else b",\n")
        out.write(text.encode())
        if not array:
            out.write(b"\n")
        first = False
    if array:
        out.write(b"[]\n" if first else b"\n]\n")


def _one_line(line: str) -> str:
    return line.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
