"""Storage: what the audit tables grew by per change, against the size of the row images."""

from __future__ import annotations

from typing import Any

import psycopg

from pgaudit_tool import schema
from pgaudit_tool.bench.config import AUDITED
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.stats import rounded


def audit_size(conn: psycopg.Connection[Any]) -> int:
    """Total size of audit.change and audit.transaction, in bytes."""
    row = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass) + pg_total_relation_size(%s::regclass)",
        (f"{schema.SCHEMA}.change", f"{schema.SCHEMA}.transaction"),
    ).fetchone()
    return int(row[0]) if row else 0


def record_storage(s: Session, grown: int) -> None:
    """Bytes per change (``grown`` over the changes of ``audited``) and the images' sizes."""
    row = s.conn.execute(
        "SELECT count(*), avg(coalesce(pg_column_size(old), 0) + coalesce(pg_column_size(new), 0)),"
        " avg(pg_column_size(old)), avg(pg_column_size(new))"
        " FROM audit.change WHERE relid = %s",
        (s.oid(AUDITED),),
    ).fetchone()
    assert row is not None
    count = int(row[0])
    s.result["changes_measured"] = count
    s.result["audit_bytes_per_change"] = rounded(grown / count if count else None, 1)
    s.result["image_bytes_per_change"] = rounded(row[1], 1)
    s.result["old_image_bytes"] = rounded(row[2], 1)
    s.result["new_image_bytes"] = rounded(row[3], 1)
