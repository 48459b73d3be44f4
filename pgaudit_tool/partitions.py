"""The partitioned log: list its partitions and keep them ahead of need (``maintain``).

``audit.change`` and ``audit.transaction`` are range-partitioned by the start of the writing
transaction (schema revision 0009, ``sql/functions/12_partition.sql``). ``maintain`` is what a
cron job runs: it seals the finished transactions into the hash chain and creates the partitions
the log needs, without making audited writes wait.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgaudit_tool.db import translated_errors, write_transaction

MAINTAIN_COLUMNS = ("action", "object", "lower", "upper", "rows")
PARTITION_COLUMNS = ("log", "partition", "lower", "upper", "estimated_rows")


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
