"""Storage: what the audit rows of the bulk phase occupy per change, against their images.

The audit tables may hold free space (earlier bench runs delete their rows, any database has
churn), so their growth during the run can be anything down to negative. Instead the audit rows
of the ``audited`` table, and their transaction records, are copied into scratch tables defined
like ``audit.change`` and ``audit.transaction`` (same columns and indexes), whose total size is
the storage those changes need.
"""

from __future__ import annotations

from psycopg import sql

from pgaudit_tool import schema
from pgaudit_tool.bench.config import AUDITED
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.stats import rounded

_COPY = """
CREATE TABLE {change_copy} (LIKE {change} INCLUDING ALL) WITH (autovacuum_enabled = off);
INSERT INTO {change_copy} OVERRIDING SYSTEM VALUE
    SELECT * FROM {change} WHERE relid = {relid} ORDER BY id;
CREATE TABLE {transaction_copy} (LIKE {transaction} INCLUDING ALL) WITH (autovacuum_enabled = off);
INSERT INTO {transaction_copy}
    SELECT * FROM {transaction} AS x
     WHERE x.txid IN (SELECT c.txid FROM {change} AS c WHERE c.relid = {relid}) ORDER BY x.txid;
"""


def record_storage(s: Session) -> None:
    """Bytes per change of the ``audited`` table's audit rows, and the images' sizes."""
    change_copy, transaction_copy = s.table("change_copy"), s.table("transaction_copy")
    s.conn.execute(
        sql.SQL(_COPY).format(
            change_copy=change_copy,
            transaction_copy=transaction_copy,
            change=sql.Identifier(schema.SCHEMA, "change"),
            transaction=sql.Identifier(schema.SCHEMA, "transaction"),
            relid=sql.Literal(s.oid(AUDITED)),
        )
    )
    s.vacuum(change_copy)
    s.vacuum(transaction_copy)
    row = s.conn.execute(
        sql.SQL(
            "SELECT count(*), pg_total_relation_size(%s::oid::regclass)"
            " + pg_total_relation_size(%s::oid::regclass),"
            " avg(coalesce(pg_column_size(old), 0) + coalesce(pg_column_size(new), 0)),"
            " avg(pg_column_size(old)), avg(pg_column_size(new)) FROM {}"
        ).format(change_copy),
        (s.oid("change_copy"), s.oid("transaction_copy")),
    ).fetchone()
    assert row is not None
    count = int(row[0])
    s.result["changes_measured"] = count
    s.result["audit_bytes_per_change"] = rounded(int(row[1]) / count if count else None, 1)
    s.result["image_bytes_per_change"] = rounded(row[2], 1)
    s.result["old_image_bytes"] = rounded(row[3], 1)
    s.result["new_image_bytes"] = rounded(row[4], 1)
    s.conn.execute(sql.SQL("DROP TABLE {}, {}").format(change_copy, transaction_copy))
