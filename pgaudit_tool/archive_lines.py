"""History of archived changes as JSON text, rendered by DuckDB exactly as the server renders
the live log's (``history --format json|jsonl --archive``).

Loading archived rows into the server costs most of such a read: the server parses every JSON
image only to write it out again. Here DuckDB reads, joins, filters and renders the archived
rows itself, and :func:`pgaudit_tool.history.export_history` merges its lines with the server's
by change id. What DuckDB cannot decide exactly, the server decides:

* table names are quoted by ``format('%I.%I')`` (keywords, case and odd characters);
* changed columns are listed in the database's collation (the server sorts the keys);
* changed columns are compared in DuckDB only between images whose numbers are all integers
  of at most 15 digits: DuckDB reads JSON numbers as doubles, which keep such integers exact,
  and jsonb equality is then equality of DuckDB's JSON text; for images with a fraction or a
  longer number (``1.0`` equals ``1`` for jsonb) the server runs ``audit.changed_columns``.

Strings are escaped as PostgreSQL's JSON output escapes them (``\\u001f`` in lower case), times
are written in UTC as ``row_to_json`` writes them under :data:`pgaudit_tool.export.OUTPUT_SETTINGS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from pgaudit_tool.archive import KeyTexts, duck_literal, duckdb_module, duckdb_session
from pgaudit_tool.db import load_json, translated_errors
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.history import HistoryFilter

OP_LETTERS = {"INSERT": "I", "UPDATE": "U", "DELETE": "D", "TRUNCATE": "T"}
_BATCH = 5000
# A number that DuckDB may not read exactly, or that jsonb compares by value (1.0 = 1): a
# fraction or 16 digits in a row (anywhere in the text, strings too: that only costs time).
_INEXACT = r"'[0-9]\.[0-9]|[0-9]{16}'"
# Characters PostgreSQL escapes in a JSON string, and how (json.c, escape_json).
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\b", "\\b"), ("\f", "\\f"), ("\n", "\\n")]
_ESCAPES += [("\r", "\\r"), ("\t", "\\t")]
_ESCAPES += [(chr(c), f"\\u{c:04x}") for c in range(1, 32) if chr(c) not in "\b\f\n\r\t"]


def _string(expr: str) -> str:
    """DuckDB SQL: ``expr`` (VARCHAR) as a JSON string as PostgreSQL writes it, or null.
    DuckDB's ``to_json`` escapes as PostgreSQL does but for the case of ``\\u00XX``; a string
    where it wrote one (rare: control characters) is escaped character by character."""
    escaped = expr
    for char, escape in _ESCAPES:
        escaped = f"replace({escaped}, {duck_literal(char)}, {duck_literal(escape)})"
    duck = f"to_json({expr})::VARCHAR"
    return (
        f"coalesce(CASE WHEN contains({duck}, '\\u00') THEN '\"' || {escaped} || '\"'"
        f" ELSE {duck} END, 'null')"
    )


def _time(expr: str) -> str:
    """DuckDB SQL: a TIMESTAMPTZ as ``row_to_json`` writes it in UTC, or null. In a DuckDB
    session whose time zone is UTC its text is PostgreSQL's (``2025-01-01 00:00:00.5+00``)."""
    return f"coalesce('\"' || replace({expr}::VARCHAR, ' ', 'T') || ':00\"', 'null')"


def _raw(expr: str) -> str:
    """DuckDB SQL: a number or JSON text as it is, or null."""
    return f"coalesce({expr}::VARCHAR, 'null')"


#: Each column of history (``pgaudit_tool.history.HISTORY_COLUMNS``, in order) as DuckDB SQL
#: over the table ``sel`` joined with ``names`` and ``changed``.
_COLUMNS = {
    "id": _raw("id"),
    "table": _string("quoted"),
    "op": "CASE op WHEN 'I' THEN '\"INSERT\"' WHEN 'U' THEN '\"UPDATE\"'"
    " WHEN 'D' THEN '\"DELETE\"' ELSE '\"TRUNCATE\"' END",
    "pk": _raw("pk"),
    "old": _raw("old"),
    "new": _raw("new"),
    "changed": "CASE WHEN op = 'U' THEN coalesce(changed_json, '[]') ELSE 'null' END",
    "txid": _raw("txid"),
    "at": _time("clock_at"),
    "db_user": _string("db_user"),
    "role": _string("role"),
    "actor": _string("actor"),
    "context": _raw("context"),
    "client_addr": _string("split_part(client_addr, '/', 1)"),
    "application_name": _string("application_name"),
    "client_port": _raw("client_port"),
    "backend_pid": _raw("backend_pid"),
    "statement_at": _time("statement_at"),
    "transaction_started_at": _time("started_at"),
}


def archived_lines(
    conn: psycopg.Connection[Any],
    pairs: Sequence[dict[str, Path]],
    flt: HistoryFilter,
    key: KeyTexts | None,
) -> Iterator[tuple[int, str]]:
    """(id, JSON text) of the archived changes in ``pairs`` that the history filter ``flt``
    selects (its ``limit`` and ``last`` too), by id: the lines ``row_to_json`` would write for
    them in ``audit.history``. ``key``: the whole key the filter names, if it does."""
    line = " || ',' || ".join(
        f"{duck_literal(json.dumps(name) + ':')} || {expr}" for name, expr in _COLUMNS.items()
    )
    yield from _archived(conn, pairs, flt, key, f"id, '{{' || {line} || '}}'")


def archived_values(
    conn: psycopg.Connection[Any],
    pairs: Sequence[dict[str, Path]],
    flt: HistoryFilter,
    key: KeyTexts | None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, change) of the same changes as :func:`archived_lines`, each change the dict
    ``Audit.history`` gives for the live log: the Python values psycopg makes of the server's
    (JSON by :data:`pgaudit_tool.db.load_json`, times in the session's time zone)."""
    zone = conn.info.timezone
    for row in _archived(conn, pairs, flt, key, _VALUES):
        change = dict(zip(_VALUE_KEYS, row, strict=True))
        for name in ("pk", "old", "new", "context"):
            change[name] = None if change[name] is None else load_json(change[name])
        for name in ("at", "statement_at", "transaction_started_at"):
            change[name] = change[name].astimezone(zone)
        change["op"] = OP_NAMES[change["op"]]
        if change["op"] != "UPDATE":
            change["changed"] = None
        yield change["id"], change


OP_NAMES = {letter: name for name, letter in OP_LETTERS.items()}
#: The columns of history (``pgaudit_tool.history.HISTORY_COLUMNS``, in order) from DuckDB.
_VALUE_COLUMNS = {
    "id": "id",
    "table": "quoted",
    "op": "op",
    "pk": "pk",
    "old": "old",
    "new": "new",
    "changed": "coalesce(changed_list, [])",
    "txid": "txid",
    "at": "clock_at",
    "db_user": "db_user",
    "role": "role",
    "actor": "actor",
    "context": "context",
    "client_addr": "split_part(client_addr, '/', 1)",
    "application_name": "application_name",
    "client_port": "client_port",
    "backend_pid": "backend_pid",
    "statement_at": "statement_at",
    "transaction_started_at": "started_at",
}
_VALUE_KEYS = tuple(_VALUE_COLUMNS)
_VALUES = ", ".join(_VALUE_COLUMNS.values())


def _archived(
    conn: psycopg.Connection[Any],
    pairs: Sequence[dict[str, Path]],
    flt: HistoryFilter,
    key: KeyTexts | None,
    columns: str,
) -> Iterator[tuple[Any, ...]]:
    """``columns`` (DuckDB SQL over ``sel`` joined with ``names`` and ``changed``) of the
    archived changes ``flt`` selects, by id."""
    if not pairs:
        return
    duckdb = duckdb_module()
    with duckdb_session() as con:
        try:
            con.execute("SET TimeZone = 'UTC'")
            _select(con, pairs, flt, key)
            _quote_names(conn, con)
            _changed(conn, con)
            cur = con.execute(
                f"SELECT {columns} FROM sel"  # noqa: S608
                " LEFT JOIN names USING (schema_name, table_name)"
                " LEFT JOIN changed USING (id) ORDER BY id"
            )
        except duckdb.Error as exc:
            names = ", ".join(p.name for pair in pairs for p in pair.values())
            raise InvalidInput(
                f"cannot read the archive files ({names}): {str(exc).splitlines()[0]}",
                hint="pgaudit-tool verify --archive DIR checks the files.",
            ) from None
        while batch := cur.fetchmany(_BATCH):
            yield from batch


def _select(
    con: Any, pairs: Sequence[dict[str, Path]], flt: HistoryFilter, key: KeyTexts | None
) -> None:
    """DuckDB table ``sel``: the archived changes ``flt`` selects, with their transactions.
    A filter on transactions (actor, login role) picks them first (table ``matched``): the
    change files are then read for their ids only, which lets DuckDB skip most of them."""
    files = {log: [str(pair[log]) for pair in pairs] for log in ("change", "transaction")}
    where, params = _conditions(
        [
            ("c.relid = ?", None if flt.table is None else flt.table.oid),
            ("c.txid = ?", flt.txid),
            ("c.op = ?", None if flt.op is None else OP_LETTERS.get(flt.op.upper())),
            ("c.clock_at >= ?", flt.since),
            ("c.clock_at < ?", flt.until),
            ("c.started_at < ?", flt.until),
        ]
    )
    if key is not None:
        condition, values = key.condition("c.pk")
        where.append(condition)
        params.extend(values)
    tx_where, tx_params = _conditions([("actor = ?", flt.actor), ("db_user = ?", flt.db_user)])
    if tx_where:
        con.execute(
            "CREATE TEMP TABLE matched AS SELECT * FROM read_parquet(?)"  # noqa: S608
            f" WHERE {' AND '.join(tx_where)}",
            [files["transaction"], *tx_params],
        )
        joined = "JOIN matched AS t"
        where.append("c.txid IN (SELECT txid FROM matched)")
    else:
        joined = "LEFT JOIN read_parquet(?) AS t"
        params.insert(0, files["transaction"])
    order = "ORDER BY c.id"
    if flt.limit is not None:
        order += f" LIMIT {int(flt.limit)}"
    elif flt.last is not None:
        order = f"ORDER BY c.id DESC LIMIT {int(flt.last)}"
    con.execute(
        "CREATE TEMP TABLE sel AS SELECT c.id, c.txid, c.schema_name, c.table_name, c.op, c.pk,"  # noqa: S608
        " c.old, c.new, c.role, c.clock_at, c.statement_at, c.started_at, t.db_user, t.actor,"
        " t.context, t.client_addr, t.client_port, t.application_name, t.backend_pid"
        f" FROM read_parquet(?) AS c {joined} ON t.txid = c.txid AND t.started_at = c.started_at"
        f" WHERE {' AND '.join(where) or 'true'} {order}",
        [files["change"], *params],
    )


def _conditions(candidates: list[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    """The conditions whose value is given, and their values."""
    given = [(condition, value) for condition, value in candidates if value is not None]
    return [c for c, _ in given], [v for _, v in given]


def _quote_names(conn: psycopg.Connection[Any], con: Any) -> None:
    """DuckDB table ``names``: each table name of ``sel`` as the server quotes it."""
    pairs = con.execute("SELECT DISTINCT schema_name, table_name FROM sel").fetchall()
    with translated_errors():
        quoted = conn.execute(
            "SELECT u.s, u.t, pg_catalog.format('%%I.%%I', u.s, u.t)"
            " FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS u(s, t)",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        ).fetchall()
    con.execute("CREATE TEMP TABLE names (schema_name VARCHAR, table_name VARCHAR, quoted VARCHAR)")
    if quoted:
        con.executemany("INSERT INTO names VALUES (?, ?, ?)", quoted)


def _changed(conn: psycopg.Connection[Any], con: Any) -> None:
    """DuckDB table ``changed`` (id, changed_json, changed_list): the changed columns of each
    UPDATE of ``sel`` as a JSON array and as a list, sorted in the database's collation."""
    inexact = f"(regexp_matches(coalesce(old, ''), {_INEXACT}) OR regexp_matches(coalesce(new, ''), {_INEXACT}))"
    con.execute(
        "CREATE TEMP TABLE images AS SELECT id, json_transform(old, '\"MAP(VARCHAR, JSON)\"') AS o,"  # noqa: S608
        " json_transform(new, '\"MAP(VARCHAR, JSON)\"') AS n"
        f" FROM sel WHERE op = 'U' AND NOT {inexact}"
    )
    con.execute(
        "CREATE TEMP TABLE keys AS SELECT id, unnest(list_filter("
        " list_distinct(list_concat(coalesce(map_keys(o), []), coalesce(map_keys(n), []))),"
        " lambda k: map_contains(o, k) IS DISTINCT FROM map_contains(n, k)"
        " OR o[k] IS DISTINCT FROM n[k])) AS k FROM images"
    )
    exact = _changed_by_server(conn, con, inexact)
    distinct = [k for (k,) in con.execute("SELECT DISTINCT k FROM keys").fetchall()]
    distinct += sorted({k for _, cols in exact for k in cols} - set(distinct))
    with translated_errors():
        ranked = conn.execute(
            "SELECT k, pg_catalog.row_number() OVER (ORDER BY k) FROM pg_catalog.unnest(%s::text[]) AS k",
            (distinct,),
        ).fetchall()
    con.execute("CREATE TEMP TABLE ranks (k VARCHAR, r BIGINT)")
    if ranked:
        con.executemany("INSERT INTO ranks VALUES (?, ?)", ranked)
    if exact:
        con.executemany(
            "INSERT INTO keys SELECT ?, unnest(?::VARCHAR[])",
            [(i, cols) for i, cols in exact if cols],
        )
    con.execute(
        "CREATE TEMP TABLE changed AS SELECT id,"  # noqa: S608
        f" '[' || string_agg({_string('k')}, ',' ORDER BY r) || ']' AS changed_json,"
        " list(k ORDER BY r) AS changed_list FROM keys JOIN ranks USING (k) GROUP BY id"
    )


def _changed_by_server(
    conn: psycopg.Connection[Any], con: Any, inexact: str
) -> list[tuple[int, list[str]]]:
    """The changed columns of the UPDATEs of ``sel`` whose numbers DuckDB may not compare
    exactly, computed by the server (``audit.changed_columns``)."""
    cur = con.execute(f"SELECT id, old, new FROM sel WHERE op = 'U' AND {inexact}")  # noqa: S608
    found: list[tuple[int, list[str]]] = []
    while batch := cur.fetchmany(_BATCH):
        with translated_errors():
            found += conn.execute(
                "SELECT u.id, audit.changed_columns(u.o::jsonb, u.n::jsonb)"
                " FROM ROWS FROM (pg_catalog.unnest(%s::bigint[]), pg_catalog.unnest(%s::text[]),"
                " pg_catalog.unnest(%s::text[])) AS u(id, o, n)",
                ([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]),
            ).fetchall()
    return found
