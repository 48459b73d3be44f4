"""Server CPU per one-row transaction: where capture's fixed cost is measured.

The throughput figures of ``bench`` include the commit's flush and the client's round trips,
whose noise on a small machine hides differences of a few microseconds. This measures only the
server backend's CPU (``/proc/<pid>/stat``, so the server must run on this machine): a ``DO``
block runs N one-row UPDATEs, each its own transaction (``COMMIT`` inside the loop,
``synchronous_commit = off``), on each table in turn, repeated; per table the median of the CPU
per transaction and of its difference to the first table (run side by side, so drift cancels).

    python -m pgaudit_tool.bench.backend_cpu 'dbname=shop' plain_t audited_t [audited_t2 ...]

Each table needs the bench's columns ``id`` (keys 1..100000), ``qty`` and ``amount``
(``pgaudit_tool.bench.sql.TABLE_DDL``).
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from pgaudit_tool.errors import InvalidInput

_LOOP = (
    "DO $$ BEGIN FOR i IN 1..{n} LOOP"
    " UPDATE {table} SET qty = qty + 1, amount = amount + 1"
    " WHERE id = (i * 7919 + {shift}) % {rows} + 1; COMMIT; END LOOP; END $$"
)


@dataclass(frozen=True)
class CpuFigure:
    """Median backend CPU per transaction on one table, and its difference to the first
    table's (median, lowest and highest over the repetitions), in microseconds."""

    table: str
    us: float
    delta_us: float
    delta_low_us: float
    delta_high_us: float


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(
    conninfo: str,
    tables: list[str],
    transactions: int = 10_000,
    repetitions: int = 5,
    rows: int = 100_000,
) -> list[CpuFigure]:
    """CPU per one-row UPDATE transaction of each table (the first is the reference), whose
    keys are 1..``rows``."""
    if len(tables) < 2 or min(transactions, repetitions, rows) < 1:
        raise InvalidInput("backend_cpu: give at least two tables, and positive counts")
    samples: dict[str, list[float]] = {t: [] for t in tables}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        pid = conn.info.backend_pid
        if not Path(f"/proc/{pid}/stat").exists():
            raise InvalidInput("backend_cpu: the server must run on this machine")
        conn.execute("SET synchronous_commit = off")
        for rep in range(repetitions):
            for table in tables:
                target = sql.Identifier(*table.split(".", 1))
                conn.execute(sql.SQL("VACUUM {}").format(target))
                loop = sql.SQL(_LOOP).format(
                    n=sql.Literal(transactions),
                    table=target,
                    shift=sql.Literal(rep * 13),
                    rows=sql.Literal(rows),
                )
                before = _cpu_seconds(pid)
                conn.execute(loop)
                samples[table].append((_cpu_seconds(pid) - before) * 1e6 / transactions)
    base = samples[tables[0]]
    figures = []
    for table in tables:
        deltas = [x - b for x, b in zip(samples[table], base, strict=True)]
        figures.append(
            CpuFigure(
                table,
                round(statistics.median(samples[table]), 1),
                round(statistics.median(deltas), 1),
                round(min(deltas), 1),
                round(max(deltas), 1),
            )
        )
    return figures


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    for f in backend_cpu(argv[0], argv[1:]):
        print(
            f"{f.table}: {f.us} us a transaction, {f.delta_us:+} us"
            f" ({f.delta_low_us:+} to {f.delta_high_us:+}) against {argv[1]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
