"""Measure the upgrade of an unpartitioned log (revision 0008) to the partitioned one (0009).

    python -m tests.measure_upgrade [--changes 1000000] [--dsn DSN] [--major 15]

Without ``--dsn`` a throwaway cluster is started. In a fresh database: revision 0008 as the last
release installed it (``tests/fixtures/released/0008.sql.gz``), one audited table, ``--changes``
captured changes in transactions of 1,000 rows (inserts, then updates of half of them), sealed;
then ``pgaudit-tool install`` upgrades it while a writer keeps inserting one audited row per
transaction. Prints JSON: the upgrade's duration, seconds per million changes, and the longest
time the writer waited (audited writes wait for the whole upgrade: it holds an ACCESS EXCLUSIVE
lock on the log from its first statement to its commit).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import psycopg

from pgaudit_tool import Audit
from pgaudit_tool.cluster import TempCluster, find_install
from tests.released import install_released


def _fill(dsn: str, changes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric,"
            " status text, placed_at timestamptz DEFAULT now())"
        )
        conn.execute("SELECT audit.enable('orders')")
        inserts = changes * 2 // 3
        for start in range(0, inserts, 1000):
            conn.execute(
                "INSERT INTO orders (id, customer, amount, status)"
                " SELECT g, 'customer ' || g %% 977, g %% 1000 + 0.5, 'new'"
                " FROM generate_series(%s::bigint, %s::bigint) AS g",
                (start + 1, min(start + 1000, inserts)),
            )
        for start in range(0, changes - inserts, 1000):
            conn.execute(
                "UPDATE orders SET status = 'paid' WHERE id BETWEEN %s AND %s",
                (start + 1, min(start + 1000, changes - inserts)),
            )
        conn.execute("SELECT audit.seal()")
        conn.execute("VACUUM ANALYZE audit.change, audit.transaction")


class Writer(threading.Thread):
    """Inserts one audited row per transaction until stopped; records the longest wait."""

    def __init__(self, dsn: str, pause: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.longest, self.count = dsn, threading.Event(), 0.0, 0
        self.pause = pause
        self.errors: list[str] = []

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS pings (id bigserial PRIMARY KEY, at timestamptz)"
            )
            conn.execute("SELECT audit.enable('pings')")
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute("INSERT INTO pings (at) VALUES (now())")
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                self.longest = max(self.longest, time.monotonic() - started)
                self.count += 1
                time.sleep(self.pause)


def measure(dsn: str, changes: int) -> dict[str, Any]:
    install_released(dsn, "0008")
    started = time.monotonic()
    _fill(dsn, changes)
    fill_s = time.monotonic() - started
    with psycopg.connect(dsn) as conn:
        size = conn.execute(
            "SELECT pg_total_relation_size('audit.change') + pg_total_relation_size('audit.transaction'),"
            " (SELECT count(*) FROM audit.change)"
        ).fetchone()
    assert size is not None
    writer = Writer(dsn)
    writer.start()
    time.sleep(1)
    with Audit.connect(dsn) as audit:
        started = time.monotonic()
        result = audit.install()
        upgrade_s = time.monotonic() - started
        problems = audit.verify()
    time.sleep(0.5)
    writer.stop.set()
    writer.join()
    return {
        "changes": int(size[1]),
        "log_bytes_before": int(size[0]),
        "fill_s": round(fill_s, 1),
        "upgrade": f"{result.before} -> {result.after}",
        "upgrade_s": round(upgrade_s, 2),
        "upgrade_s_per_million_changes": round(upgrade_s / size[1] * 1e6, 2),
        "writer_longest_wait_s": round(writer.longest, 2),
        "writer_transactions": writer.count,
        "writer_errors": writer.errors,
        "verify_problems": len(problems),
    }


def target(argv: list[str] | None, doc: str, changes: int, stack: ExitStack) -> tuple[str, int]:
    """The measurement scripts' options (--changes, --dsn, --major): the database to measure
    in (a throwaway cluster, stopped with ``stack``, unless --dsn names one) and the changes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--changes", type=int, default=changes)
    parser.add_argument("--dsn", help="an empty database to use (default: a throwaway cluster)")
    parser.add_argument("--major", type=int, default=None, help="PostgreSQL major of the cluster")
    args = parser.parse_args(argv)
    if args.dsn is not None:
        return args.dsn, args.changes
    cluster = TempCluster(find_install(args.major)).start()
    stack.callback(cluster.stop)
    return cluster.dsn, args.changes


def main(argv: list[str] | None = None) -> int:
    with ExitStack() as stack:
        dsn, changes = target(argv, __doc__ or "", 1_000_000, stack)
        json.dump(measure(dsn, changes), sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
