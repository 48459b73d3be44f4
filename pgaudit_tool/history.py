"""Read the audit log: changes as plain records, streamed from a server-side cursor."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from pgaudit_tool.db import TableRef, jsonb, stream, translated_errors
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.export import export, export_merged, merged_by_key
from pgaudit_tool.output import to_json_text

HISTORY_COLUMNS = (
    "id",
    "table",
    "op",
    "pk",
    "old",
    "new",
    "changed",
    "txid",
    "at",
    "db_user",
    "role",
    "actor",
    "context",
    "client_addr",
    "application_name",
    "client_port",
    "backend_pid",
    "statement_at",
    "transaction_started_at",
)

#: What a person reading history in a table needs (``history`` in table format).
PEOPLE_COLUMNS = ("id", "at", "table", "op", "pk", "actor", "db_user", "changes")

OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")

_SELECT = """
SELECT h.id, h.table_name AS "table", h.op, h.pk, h.old, h.new,
       CASE WHEN h.op = 'UPDATE' THEN audit.changed_columns(h.old, h.new) END AS changed,
       h.txid::text::bigint AS txid, h.at, h.db_user, h.role, h.actor, h.context,
       pg_catalog.host(h.client_addr) AS client_addr, h.application_name, h.client_port, h.backend_pid,
       h.statement_at, h.transaction_started_at
  FROM {source} AS h
"""
#: Where history is read from: the view of the live log (or, with an archive, a temporary view
#: over the live log and the archived rows, see :func:`pgaudit_tool.archive.attach`).
LIVE = sql.Identifier("audit", "history")


@dataclass(frozen=True)
class HistoryFilter:
    """Which changes to list. Every field is optional; they combine with AND.

    ``pk`` is the key as the log stores it (see :func:`pgaudit_tool.reconstruct.normalize_pk`),
    or with ``pk_part`` a part of a composite key (every row having it);
    ``since`` is inclusive, ``until`` exclusive, both compared with the capture time ``at``.
    ``limit`` keeps the oldest N of the matching changes, ``last`` the N most recent (listed
    oldest first all the same); not both.
    """

    table: TableRef | None = None
    pk: Any = None
    actor: str | None = None
    db_user: str | None = None
    txid: int | None = None
    op: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    last: int | None = None
    pk_part: bool = False


def for_people(change: dict[str, Any]) -> dict[str, Any]:
    """The change with ``changes``: for an UPDATE each changed column as ``column: before ->
    after``; for an INSERT the new row, for a DELETE the old one (compact JSON)."""
    old, new = change.get("old"), change.get("new")
    if change.get("op") == "UPDATE" and old is not None and new is not None:
        text = ", ".join(
            f"{column}: {to_json_text(old.get(column), compact=True)} -> "
            f"{to_json_text(new.get(column), compact=True)}"
            for column in change.get("changed") or ()
        )
    else:
        image = new if new is not None else old
        text = "" if image is None else to_json_text(image, compact=True)
    return {**change, "changes": text}


def _where(flt: HistoryFilter) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if flt.table is not None:
        clauses.append(sql.SQL("h.relid = %s::oid"))
        params.append(flt.table.oid)
    if flt.pk is not None and flt.table is not None:
        # A part of a composite key: every row whose key contains it.
        match = sql.SQL("@>" if flt.pk_part else "=")
        clauses.append(
            sql.SQL("h.pk {} ANY (audit._pk_variants(%s::oid::regclass, %s))").format(match)
        )
        params.extend([flt.table.oid, jsonb(flt.pk)])
    for column, value in (("actor", flt.actor), ("db_user", flt.db_user)):
        if value is not None:
            clauses.append(sql.SQL("h.{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if flt.txid is not None:
        clauses.append(sql.SQL("h.txid = %s::text::xid8"))
        params.append(str(flt.txid))
    if flt.op is not None:
        op = flt.op.upper()
        if op not in OPS:
            raise InvalidInput(
                f"unknown operation {flt.op!r}", hint=f"Use one of {', '.join(OPS)}."
            )
        clauses.append(sql.SQL("h.op = %s"))
        params.append(op)
    if flt.since is not None:
        clauses.append(sql.SQL("h.at >= %s"))
        params.append(flt.since)
    if flt.until is not None:
        # A transaction starts before its changes: partitions of later starts are skipped.
        clauses.append(sql.SQL("h.at < %s AND h.transaction_started_at < %s"))
        params.extend([flt.until, flt.until])
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


def _query(flt: HistoryFilter, source: sql.Composable = LIVE) -> tuple[sql.Composed, list[Any]]:
    """The query of the changes ``flt`` selects in ``source``, oldest first, and its parameters."""
    if flt.limit is not None and flt.limit < 0:
        raise InvalidInput("--limit must be zero or more")
    if flt.last is not None and flt.last < 0:
        raise InvalidInput("--last must be zero or more")
    if flt.limit is not None and flt.last is not None:
        raise InvalidInput(
            "--limit and --last cannot be combined",
            hint="--limit N gives the oldest N changes, --last N the most recent N: pick one.",
        )
    if flt.pk is not None and flt.table is None:
        raise InvalidInput("a key needs a table", hint="Name the table: history TABLE --pk KEY.")
    where, params = _where(flt)
    select = sql.SQL(_SELECT).format(source=source)
    query = select + where + sql.SQL(" ORDER BY h.id")
    if flt.limit is not None:
        query = query + sql.SQL(" LIMIT %s")
        params.append(flt.limit)
    elif flt.last is not None:
        # The most recent N (by id, the order of normal output), then back to oldest first.
        query = (
            sql.SQL("SELECT * FROM (")
            + select
            + where
            + sql.SQL(" ORDER BY h.id DESC LIMIT %s) AS recent ORDER BY id")
        )
        params.append(flt.last)
    return query, params


def history(
    conn: psycopg.Connection[Any],
    flt: HistoryFilter | None = None,
    source: sql.Composable = LIVE,
) -> Iterator[dict[str, Any]]:
    """Changes matching ``flt``, oldest first, streamed (rows arrive as the server sends them)."""
    with translated_errors():
        query, params = _query(flt or HistoryFilter(), source)
    yield from stream(conn, "pgaudit_history", query, params)


def history_merged(
    conn: psycopg.Connection[Any],
    flt: HistoryFilter,
    archived: Iterable[tuple[int, dict[str, Any]]],
) -> Iterator[dict[str, Any]]:
    """Changes matching ``flt`` in the live log merged by id with ``archived``: (id, change) of
    the archived changes ``flt`` selects, by id (:func:`pgaudit_tool.archive_lines.archived_values`);
    only the first ``limit`` or the ``last`` of the merge (each side has at most as many)."""
    with translated_errors():
        query, params = _query(flt)
    live = ((row["id"], row) for row in stream(conn, "pgaudit_history", query, params))
    yield from merged_by_key(live, archived, limit=flt.limit, last=flt.last)


def export_history(
    conn: psycopg.Connection[Any],
    flt: HistoryFilter,
    fmt: str,
    out: BinaryIO,
    source: sql.Composable = LIVE,
    archived: Iterable[tuple[int, str]] | None = None,
) -> None:
    """Write the changes matching ``flt`` to ``out`` as csv, json or jsonl text rendered by
    the server (:mod:`pgaudit_tool.export`); with ``archived`` (json or jsonl: (id, JSON text)
    of archived changes ``flt`` selects, by id, see :mod:`pgaudit_tool.archive_lines`) merged
    by id with those of ``source``."""
    with translated_errors():
        query, params = _query(flt, source)
        bound = _bind(conn, query, params)
    if archived is None:
        export(conn, bound, sql.SQL("x.id"), fmt, out)
    else:
        export_merged(
            conn, bound, sql.SQL("x.id"), fmt, out, archived, limit=flt.limit, last=flt.last
        )


def _bind(conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any]) -> sql.SQL:
    """``query`` with its parameters as literals (for COPY, which takes no parameters)."""
    with psycopg.ClientCursor(conn) as cur:
        return sql.SQL(cur.mogrify(query, params))
