"""Measure history read through an archive of many changes (``history_archive_ms``).

    python -m tests.measure_archive [--changes 10000000] [--dsn DSN] [--major 15]

In a fresh database (a throwaway cluster unless ``--dsn`` names an empty one): the audit schema,
table ``t``, and an archive directory holding one dropped partition pair of ``--changes``
synthetic changes (written by DuckDB in the archive's layout: 20 tables, one of them ``t``;
2,000 keys per table; 50 actors; one transaction per 10 changes, spread over 30 days), recorded
in ``audit.retired_partition`` as ``archive --drop`` records it. Then times, with the archive,
the history of one row of ``t`` and of one actor for one month (both through ``Audit.history``,
every row fetched as Python values; the month also as ``history --format jsonl`` writes it,
rendered by the server), each the median of 3 runs. Prints JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pgaudit_tool import Audit
from pgaudit_tool.archive import (
    FORMAT,
    MANIFEST,
    ORDER,
    database_identity,
    duckdb_module,
    sha256_of,
)
from tests.measure_upgrade import target

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


def _timed(run: Any) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(3):
        started = time.perf_counter()
        rows = sum(1 for _ in run())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def _export_jsonl(audit: Audit, month: dict[str, str], directory: Path) -> list[None]:
    """As ``history --format jsonl`` writes it (rendered by the server), to /dev/null."""
    with open(os.devnull, "wb") as sink:
        audit.export_history(sink, "jsonl", archive=directory, **month)
    return []


def measure(dsn: str, changes: int, directory: Path) -> dict[str, Any]:
    duckdb = duckdb_module()
    with Audit.connect(dsn) as audit:
        audit.install()
        audit.conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        audit.enable("t")
        relid = audit.conn.execute("SELECT 't'::regclass::oid::bigint").fetchone()[0]  # type: ignore[index]
        started = time.perf_counter()
        con = duckdb.connect()
        files = {}
        for log, template in (("change", _CHANGES), ("transaction", _TRANSACTIONS)):
            path = directory / f"{log}_p20250101_000000.parquet"
            con.execute(
                template.replace("$relid", str(relid))
                .replace("$n", str(changes))
                .replace("$path", str(path))
                .replace("$order", ", ".join(ORDER[log]))
            )
            rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0]
            files[log] = {"file": path.name, "rows": rows, "bytes": path.stat().st_size,
                          "sha256": sha256_of(path)}  # fmt: skip
        con.close()
        write_s = time.perf_counter() - started
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
        row_ms, row_rows = _timed(lambda: audit.history("t", pk=7, archive=directory))
        month = {"actor": "user7", "since": "2025-01-01", "until": "2025-02-01"}
        actor_ms, actor_rows = _timed(lambda: audit.history(**month, archive=directory))
        export_ms, _ = _timed(lambda: _export_jsonl(audit, month, directory))
    return {
        "archived_changes": changes,
        "archive_bytes": sum(f["bytes"] for f in files.values()),
        "synthesize_s": round(write_s, 1),
        "history_archive_ms": round(row_ms, 1),
        "history_archive_rows": row_rows,
        "history_archive_actor_month_ms": round(actor_ms, 1),
        "history_archive_actor_month_rows": actor_rows,
        "history_archive_actor_month_jsonl_ms": round(export_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    with ExitStack() as stack:
        dsn, changes = target(argv, __doc__ or "", 10_000_000, stack)
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgaudit-arch-")))
        json.dump(measure(dsn, changes, directory), sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
