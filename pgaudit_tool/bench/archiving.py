"""Archive: the bulk phase's audit rows written to Parquet as ``archive`` writes them.

``archive_changes_per_s``: change rows (with their transaction rows) exported per second,
from the server's COPY to a compressed Parquet file read back (``archive.write_parquet``),
median of ``repetitions`` after a vacuum and a checkpoint.
``archive_bytes_per_change``: the two files' bytes per change; ``archive_bytes_ratio``: that
over ``live_bytes_per_change`` (the live log's bytes per change, as ``audit_bytes_per_change``
measures it). Skipped (None) without DuckDB.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from psycopg import sql

from pgaudit_tool import archive
from pgaudit_tool.bench.config import AUDITED
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.stats import rounded
from pgaudit_tool.errors import InvalidInput

ARCHIVE_KEYS = (
    "live_bytes_per_change",
    "archive_changes_per_s",
    "archive_bytes_per_change",
    "archive_bytes_ratio",
)


def archive_phase(s: Session) -> None:
    """Export the ``audited`` table's change and transaction rows to Parquet, timed."""
    live = s.result.get("audit_bytes_per_change")
    s.result["live_bytes_per_change"] = live
    try:
        archive.duckdb_module()
    except InvalidInput:
        s.notes.append("archive figures skipped: DuckDB is not installed (pgaudit-tool[archive]).")
        return
    s.progress("archive: the bulk phase's audit rows to Parquet")
    relid = sql.Literal(s.oid(AUDITED))
    queries = {
        log: sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c, _ in archive.COLUMNS[log]),
            sql.Identifier("audit", log),
            sql.SQL(
                "relid = {}"
                if log == "change"
                else "txid IN (SELECT c.txid FROM audit.change AS c WHERE c.relid = {})"
            ).format(relid),
        )
        for log in ("change", "transaction")
    }
    counted = {log: _count(s, query) for log, query in queries.items()}
    # Quiet conditions: the bulk phase's dead rows vacuumed and written out first (an
    # autovacuum or checkpoint running beside the export moved the figure by 30%).
    s.vacuum(sql.Identifier("audit", "change"))
    s.vacuum(sql.Identifier("audit", "transaction"))
    s.checkpoint()
    rates: list[float] = []
    for _ in range(s.config.repetitions):
        rows, elapsed, size = _write(s, queries, counted)
        if not rows:
            return
        rates.append(rows / elapsed)
    s.result["archive_changes_per_s"] = rounded(statistics.median(rates), 0)
    per_change = size / rows
    s.result["archive_bytes_per_change"] = rounded(per_change, 1)
    s.result["archive_bytes_ratio"] = rounded(per_change / live, 3) if live else None
    s.notes.append(
        f"archive_changes_per_s: median of {len(rates)}, range"
        f" {min(rates):,.0f}-{max(rates):,.0f} changes/s."
    )


def _write(
    s: Session, queries: Mapping[str, sql.Composable], counted: Mapping[str, int]
) -> tuple[int, float, int]:
    """Both files written once, timed: the changes written, seconds, the files' bytes."""
    with tempfile.TemporaryDirectory(prefix="pgaudit-bench-archive-") as tmp:
        started = time.perf_counter()
        rows = {
            log: archive.write_parquet(
                s.conn,
                query,
                log,
                Path(tmp) / f"{log}.parquet",
                streams=archive.render_streams(log, counted[log]),
            )
            for log, query in queries.items()
        }
        elapsed = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.parquet"))
    return rows["change"], elapsed, size


def _count(s: Session, query: sql.Composable) -> int:
    row = s.conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS q").format(query)).fetchone()
    return int(row[0]) if row else 0
