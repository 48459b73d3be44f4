"""The partitioned log: list its partitions and keep them ahead of need (``maintain``).

``audit.change`` and ``audit.transaction`` are range-partitioned by the start of the writing
transaction (schema revision 0009, ``sql/functions/12_partition.sql``). ``maintain`` is what a
cron job runs: it seals the finished transactions into the hash chain and creates the partitions
the log needs, without making audited writes wait.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgaudit_tool.db import translated_errors, write_transaction

MAINTAIN_COLUMNS = ("action", "object", "lower", "upper", "rows")
PARTITION_COLUMNS = ("log", "partition", "lower", "upper", "estimated_rows")
RETIRED_COLUMNS = (
    "id",
    "lower",
    "upper",
    "transactions",
    "changes",
    "txid_min",
    "txid_max",
    "committed_max",
    "tables",
    "reason",
    "archive",
    "retired_at",
    "retired_by",
)


def maintain(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Seal, then create partitions (``audit.maintain()``), in one transaction; one record
    per action taken (none: nothing was needed)."""
    with translated_errors(), write_transaction(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT action, object, lower, upper, rows FROM audit.maintain()"
        ).fetchall()


def partitions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every partition of the log (``audit.partitions()``), oldest first, defaults last."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT log, partition::text AS partition, lower, upper, estimated_rows"
            " FROM audit.partitions()"
        ).fetchall()


def retired(
    conn: psycopg.Connection[Any],
    relid: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    txid: int | None = None,
) -> list[dict[str, Any]]:
    """The partition pairs that left the log and may have held changes of the table ``relid``,
    captured in [``since``, ``until``), of transaction ``txid`` (``audit.retired()``)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, lower, upper, transactions, changes, txid_min::text::bigint AS txid_min,"
            " txid_max::text::bigint AS txid_max, committed_max, tables, reason, archive,"
            " retired_at, retired_by"
            " FROM audit.retired(%s::oid::regclass, %s, %s, %s::text::xid8)",
            (relid, since, until, None if txid is None else str(txid)),
        ).fetchall()


def retired_note(pairs: list[dict[str, Any]]) -> str:
    """What a reading of the live log alone missed, for people: how many pairs left, until
    when, and where they went."""
    archives = sorted({str(p["archive"]) for p in pairs if p["archive"] is not None})
    latest = max(p["committed_max"] for p in pairs)
    where = f"archived to {', '.join(archives)}" if archives else "dropped without an archive"
    if archives and any(p["archive"] is None for p in pairs):
        where += " (some dropped without one)"
    read = f"; add --archive {archives[0]} to read them" if len(archives) == 1 else ""
    return (
        f"{len(pairs)} partition pair(s) of the log that may hold changes asked for left it"
        f" (changes committed up to {latest.isoformat()}, {where}){read}"
    )
