"""History read through an archive (``history_archive_*``), in a database of its own.

The phase creates a throwaway database on the server (named as the scratch schema, dropped
afterwards; skipped with a note when the role may not create one or install the schema there):
the audit schema, table ``t``, and an archive directory holding one dropped partition pair of
``archive_changes`` synthetic changes written by DuckDB in the archive's layout (20 tables, one
of them ``t``; 2,000 keys per table; 50 actors; one transaction per 10 changes; a change every
259 µs from 2025-01-01; images as jsonb writes them), recorded in ``audit.retired_partition`` as
``archive --drop`` records it. Then, medians of 3 runs: ``history_archive_ms``, the history of
one row of ``t`` (``Audit.history``, Python values); ``history_archive_actor_month_jsonl_ms``,
one actor's changes in January 2025 as ``history --format jsonl`` writes them (to /dev/null);
``history_archive_actor_month_ms``, the same through ``Audit.history`` as Python values;
``row_at_archive_ms``, the row of ``t`` with key 7 as it was one second into the archive
(``Audit.row_at``: its 250-odd archived changes per 10 million are read, not the table's), and
``blame_archive_ms``, the blame of that row (which then exists) over the archive.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgaudit_tool.api import Audit
from pgaudit_tool.archive import (
    FORMAT,
    MANIFEST,
    ORDER,
    database_identity,
    duckdb_module,
    sha256_of,
)
from pgaudit_tool.bench.session import Session
from pgaudit_tool.errors import AuditError, InvalidInput

MONTH: dict[str, Any] = {"actor": "user7", "since": "2025-01-01", "until": "2025-02-01"}

_CHANGES = """
COPY (SELECT i AS id, i // 10 AS txid,
             CASE WHEN i % 20 = 0 THEN $relid ELSE 900000 + i % 20 END AS relid,
             'public' AS schema_name, 't' AS table_name, 'U' AS op, 'app' AS role,
             TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds((i * 259)::BIGINT) AS statement_at,
             TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds((i * 259)::BIGINT) AS clock_at,
             '{"id": ' || ((i // 20) % 2000) || '}' AS pk,
             '{"v": "old ' || i || '", "id": ' || ((i // 20) % 2000) || '}' AS old,
             '{"v": "new ' || i || '", "id": ' || ((i // 20) % 2000) || '}' AS new,
             TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds((i // 10 * 10 * 259)::BIGINT) AS started_at
        FROM range($n) AS r(i) ORDER BY $order)
  TO '$path' (FORMAT parquet, COMPRESSION zstd)
"""
_TRANSACTIONS = """
COPY (SELECT x AS txid,
             TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds((x * 10 * 259)::BIGINT) AS started_at,
             'app' AS db_user, 'shop' AS application_name, '10.0.0.' || (x % 200) AS client_addr,
             5432 AS client_port, 1000 + x % 30000 AS backend_pid, 'user' || (x % 50) AS actor,
             NULL::VARCHAR AS context,
             TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds((x * 10 * 259 + 200)::BIGINT) AS committed_at
        FROM range($n // 10) AS r(x) ORDER BY $order)
  TO '$path' (FORMAT parquet, COMPRESSION zstd)
"""


def archive_reading_phase(s: Session) -> None:
    """The phase (see the module): figures into ``s.result``, or a note saying why not."""
    try:
        duckdb_module()
    except InvalidInput:
        s.notes.append(
            "history_archive_* skipped: DuckDB is not installed (pgaudit-tool[archive])."
        )
        return
    s.progress(f"archive reading: {s.config.archive_changes:,} archived changes")
    name = sql.Identifier(s.scratch)
    try:
        s.conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    except psycopg.Error as exc:
        s.notes.append(f"history_archive_* skipped: cannot create a database ({exc.sqlstate}).")
        return
    try:
        with tempfile.TemporaryDirectory(prefix="pgaudit-bench-archive-") as tmp:
            dsn = make_conninfo(s.conninfo, dbname=s.scratch)
            s.result.update(measure(dsn, s.config.archive_changes, Path(tmp)))
    except AuditError as exc:
        s.notes.append(f"history_archive_* skipped: {exc}")
    finally:
        s.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def measure(dsn: str, changes: int, directory: Path) -> dict[str, Any]:
    """In the empty database of ``dsn``: the schema, an archive of ``changes`` synthetic changes
    in ``directory``, the timings (see the module)."""
    with Audit.connect(dsn) as audit:
        audit.install()
        audit.conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        audit.enable("t")
        _synthesize(audit, changes, directory)
        row_ms, row_rows = _timed(lambda: audit.history("t", pk=7, archive=directory))
        jsonl_ms, _ = _timed(lambda: _export_jsonl(audit, directory))
        month_ms, month_rows = _timed(lambda: audit.history(**MONTH, archive=directory))
        # The synthetic history predates enable; blame reads a row that exists now.
        audit.conn.execute(
            "UPDATE audit.tracked_table SET history_since = '2025-01-01', enabled_at = '2025-01-01'"
            " WHERE relid = 't'::regclass"
        )
        audit.conn.execute("INSERT INTO t VALUES (7, 'now')")
        audit.conn.commit()
        at = "2025-01-01T00:00:01Z"
        row_at_ms, _ = _timed(lambda: [audit.row_at("t", 7, at, archive=directory)])
        blame_ms, _ = _timed(lambda: audit.blame("t", 7, archive=directory))
    return {
        "archived_changes": changes,
        "history_archive_ms": round(row_ms, 1),
        "history_archive_rows": row_rows,
        "history_archive_actor_month_jsonl_ms": round(jsonl_ms, 1),
        "history_archive_actor_month_ms": round(month_ms, 1),
        "history_archive_actor_month_rows": month_rows,
        "row_at_archive_ms": round(row_at_ms, 1),
        "blame_archive_ms": round(blame_ms, 1),
    }


def _synthesize(audit: Audit, changes: int, directory: Path) -> None:
    """One dropped partition pair of ``changes`` changes in ``directory``, recorded as dropped."""
    relid = audit.conn.execute("SELECT 't'::regclass::oid::bigint").fetchone()[0]  # type: ignore[index]
    con = duckdb_module().connect()
    files = {}
    try:
        for log, template in (("change", _CHANGES), ("transaction", _TRANSACTIONS)):
            path = directory / f"{log}_p20250101_000000.parquet"
            con.execute(
                template.replace("$relid", str(relid))
                .replace("$n", str(changes))
                .replace("$path", str(path).replace("'", "''"))
                .replace("$order", ", ".join(ORDER[log]))
            )
            rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0]
            files[log] = {"file": path.name, "rows": rows, "bytes": path.stat().st_size,
                          "sha256": sha256_of(path)}  # fmt: skip
    finally:
        con.close()
    identity = database_identity(audit.conn)
    (directory / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "database": identity, "partitions": []})
    )
    audit.conn.execute(
        "INSERT INTO audit.retired_partition (suffix, lower, upper, transactions, changes,"
        " committed_max, tables, files, reason) VALUES ('20250101_000000',"
        " '2025-01-01', '2025-02-01', %s, %s, '2025-02-01', ARRAY[%s::oid], %s, 'archive')",
        (files["transaction"]["rows"], changes, relid,
         json.dumps({**files, "archive": str(directory)})),
    )  # fmt: skip


def _timed(run: Callable[[], Iterable[Any]]) -> tuple[float, int]:
    """Median milliseconds of 3 runs, each consuming what ``run`` returns; the rows."""
    times, rows = [], 0
    for _ in range(3):
        started = time.perf_counter()
        rows = sum(1 for _ in run())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def _export_jsonl(audit: Audit, directory: Path) -> list[None]:
    """As ``history --format jsonl`` writes it, to /dev/null."""
    with open(os.devnull, "wb") as sink:
        audit.export_history(sink, "jsonl", archive=directory, **MONTH)
    return []
