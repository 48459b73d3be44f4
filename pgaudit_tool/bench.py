"""``pgaudit-tool bench``: what auditing costs, measured on the connected database.

Everything runs in a scratch schema ``pgaudit_bench_<random>`` that is always removed at the
end, also after an error or Ctrl-C: capture is disabled on its tables, the audit rows they
produced are deleted (``audit.change``, ``audit.table_layout``, ``audit.tracked_table`` and
every other table of the audit schema with a ``relid`` column, then the ``audit.transaction``
rows left without changes), and the schema is dropped.  So the bench needs the audit schema
installed and a role that may create schemas, enable capture and delete from the audit tables:
the owner of the audit schema or a superuser.  ``CHECKPOINT`` before each measurement needs a
superuser (or ``pg_checkpoint``); without it the bench runs anyway and says so in its notes.

Unaudited and audited work is measured in the same run, alternating (the order flips at each
repetition), and every ratio is the median of the per-repetition ratios:

* bulk ``INSERT ... SELECT`` of ``rows`` rows, ``UPDATE`` of every row (two columns), ``DELETE``
  of every row, on two identical 8-column tables ``plain`` and ``audited``: ``insert_ratio``,
  ``update_ratio``, ``delete_ratio`` (audited time / unaudited time).  Each statement runs alone
  on an autocommit connection right after a ``CHECKPOINT``; the table (and, after an audited
  statement, the audit tables) is vacuumed after it, outside the timing.
* the limit: what any JSONB change log must do at least is the unaudited statement plus one
  ``INSERT ... SELECT to_jsonb(t)`` of the same rows into a bare table (no key, no index).
  INSERT logs the new images, DELETE the old ones (read before the delete), UPDATE one row per
  change with two images, old and new (both read after the update: same sizes as the real
  pair).  ``insert_limit_ratio``, ``update_limit_ratio``, ``delete_limit_ratio`` are audited
  time / (unaudited time + bare log time); ``limit_ratio`` is the median of the three.
* single-row ``UPDATE`` by primary key from ``clients`` concurrent clients for ``duration``
  seconds, with pgbench when available, else with threads of this process:
  ``single_row_update_tps_ratio`` (audited TPS / unaudited TPS).
* pgbench's built-in TPC-B-like workload with its four tables audited: ``tpcb_tps_ratio``.
  pgbench_history has no key, so it gets ``hid bigserial PRIMARY KEY`` for both runs.
  Without pgbench both TPS ratios that need it are None (the single-row one falls back to the
  built-in driver, TPC-B is not run).
* ``audit_bytes_per_change``: growth of ``audit.change`` + ``audit.transaction`` (heap, indexes,
  TOAST, free space and visibility maps) over the bulk phase / changes recorded;
  ``image_bytes_per_change``: average of ``pg_column_size(old) + pg_column_size(new)`` of
  those changes, to compare storage with the bare images.

Reconstruction (``reconstruction=True``, the default), on a third audited table ``history`` of
the same shape: ``rows`` rows are inserted, then set-based UPDATEs of chunks of keys (each its own
transaction, cycling over all keys; every tenth one also deletes the ids of its chunk divisible by
50 and inserts new rows, 4% of a chunk) run until the table has at least ``history_rows`` audit
rows; the instant after each commit is recorded with the table's row count and ``sum(qty)`` then.
The table and the audit tables are then vacuumed and analysed.

* ``row_at_median_ms``, ``row_at_p99_ms`` (nearest rank): ``SELECT audit.row_at(...)`` of up to
  200 random keys at random recorded instants, each timed alone (prepared statement, execute and
  fetch), after a few unmeasured warm-up calls; ``row_at_audit_rows``: audit rows of the table.
* ``table_at_ratio``: ``CREATE TABLE AS SELECT * FROM audit.table_at(NULL::history, T)`` against
  ``CREATE TABLE AS SELECT * FROM history``, T the recorded instant in the middle of the history
  (with ``history_rows`` >= 3 x ``rows``, every key has changed since, so the first change after T
  of each key must be found and undone); alternating, each after a CHECKPOINT, median of the
  per-repetition ratios.  The row count and ``sum(qty)`` of every rebuilt table are checked
  against those recorded at T (AuditError if not).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgaudit_tool import schema
from pgaudit_tool.cluster import available_installs
from pgaudit_tool.connection import connect, redact, resolve_conninfo
from pgaudit_tool.db import translated_errors
from pgaudit_tool.errors import AuditError, InvalidInput, PermissionDenied

__all__ = ["RESULT_KEYS", "TARGETS", "BenchConfig", "find_pgbench", "render_table", "run_bench"]

Progress = Callable[[str], None]

SCRATCH_PREFIX = "pgaudit_bench_"
PLAIN = "plain"
AUDITED = "audited"
BARE_LOG = "bare_log"
HISTORY = "history"
OPERATIONS = ("insert", "update", "delete")
TPCB_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "full_page_writes")
#: Figures not measured yet (none left; kept for the report and its notes).
NOT_MEASURED: tuple[str, ...] = ()
#: Figures of the reconstruction phase (None when it is disabled).
RECONSTRUCTION_KEYS = (
    "row_at_median_ms",
    "row_at_p99_ms",
    "table_at_ratio",
    "row_at_audit_rows",
    "row_at_samples",
    "table_at_ms",
    "table_at_live_ms",
    "table_at_rows",
    "history_transactions",
    "revert_ratio",
    "revert_ms",
    "revert_update_ms",
)
#: Reconstruction: transactions the history is spread over (about), row_at lookups (at most),
#: unmeasured row_at warm-up calls, one transaction in CHURN_EVERY also deletes and inserts.
HISTORY_TRANSACTIONS = 100
MIN_HISTORY_TRANSACTIONS = 4
ROW_AT_SAMPLES = 200
ROW_AT_WARMUP = 5
CHURN_EVERY = 10
#: Goals of the project: (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "insert_ratio": ("<=", 1.6),
    "update_ratio": ("<=", 2.0),
    "delete_ratio": ("<=", 4.0),
    "single_row_update_tps_ratio": (">=", 0.80),
    "tpcb_tps_ratio": (">=", 0.85),
}
RATIO_KEYS = (
    "insert_ratio",
    "update_ratio",
    "delete_ratio",
    "single_row_update_tps_ratio",
    "tpcb_tps_ratio",
    "limit_ratio",
    "insert_limit_ratio",
    "update_limit_ratio",
    "delete_limit_ratio",
)
RAW_KEYS = (
    *(f"{op}_{what}_ms" for op in OPERATIONS for what in (PLAIN, AUDITED, BARE_LOG)),
    "single_row_plain_tps",
    "single_row_audited_tps",
    "tpcb_plain_tps",
    "tpcb_audited_tps",
)
#: Every key of :func:`run_bench`'s result, in display order.
RESULT_KEYS = (
    *RATIO_KEYS,
    "audit_bytes_per_change",
    "image_bytes_per_change",
    "old_image_bytes",
    "new_image_bytes",
    "changes_measured",
    *RAW_KEYS,
    *RECONSTRUCTION_KEYS,
    *NOT_MEASURED,
    "rows",
    "history_rows",
    "clients",
    "duration",
    "repetitions",
    "scale",
    "single_row_driver",
    "pgbench",
    "server_version",
    "settings",
    "notes",
)

_TPS = re.compile(
    r"^tps = (\d+(?:\.\d+)?) \((?:without initial connection time|excluding connections establishing)"
)
_ANY_TPS = re.compile(r"^tps = (\d+(?:\.\d+)?)")


@dataclass
class BenchConfig:
    """What to measure. ``pgbench``: path of the binary (None: the one of the server's major
    among the local installations, else ``pgbench`` on PATH); ``use_pgbench=False`` forces the
    built-in single-row driver and skips TPC-B. ``scale``: pgbench's TPC-B scale factor.
    ``history_rows``: audit rows built on the reconstruction table before row_at is measured;
    ``reconstruction=False`` skips that phase (its figures are None)."""

    rows: int = 100_000
    clients: int = 2
    duration: float = 10.0
    repetitions: int = 3
    pgbench: str | None = None
    use_pgbench: bool = True
    scale: int = 1
    history_rows: int = 1_000_000
    reconstruction: bool = True


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


def run_bench(conninfo: str, config: BenchConfig, progress: Progress = _quiet) -> dict[str, Any]:
    """Measure the cost of auditing on the database of ``conninfo`` (see the module docstring).

    Raises NotInstalled without the audit schema, PermissionDenied when the role cannot delete
    from the audit tables (the bench could not clean up after itself), InvalidInput for a bad
    ``config``. ``progress`` receives one line per step (the CLI prints them on stderr).
    """
    _validate(config)
    resolved = resolve_conninfo(conninfo)
    with connect(resolved) as conn:
        _preflight(conn)
    scratch = SCRATCH_PREFIX + secrets.token_hex(4)
    try:
        with connect(resolved) as conn:
            result = _Bench(conn, resolved, scratch, config, progress).run()
    except BaseException:
        _cleanup(resolved, scratch, progress, quiet=True)
        raise
    _cleanup(resolved, scratch, progress)
    return result


def _validate(config: BenchConfig) -> None:
    problems = [
        name
        for name, ok in (
            ("rows", config.rows >= 1),
            ("clients", config.clients >= 1),
            ("duration", config.duration > 0),
            ("repetitions", config.repetitions >= 1),
            ("scale", config.scale >= 1),
            ("history_rows", config.history_rows >= 1),
        )
        if not ok
    ]
    if problems:
        raise InvalidInput(f"bench: {', '.join(problems)} must be positive")


def _preflight(conn: psycopg.Connection[Any]) -> None:
    """The audit schema is installed and this role may clean up after the bench."""
    with translated_errors():
        schema.require_installed(conn)
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'DELETE') AND has_table_privilege(%s, 'DELETE')",
            (f"{schema.SCHEMA}.change", f"{schema.SCHEMA}.transaction"),
        ).fetchone()
    if not (row and row[0]):
        raise PermissionDenied(
            "bench deletes the audit rows it produces and needs DELETE on audit.change and "
            "audit.transaction",
            hint="Run it as the owner of the audit schema or as a superuser.",
        )


# --------------------------------------------------------------------------- the run


@dataclass
class _Samples:
    """Per-repetition measurements, by name (``insert_plain_ms``, ``single_row_audited_tps``)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        found = self.values.get(name)
        return statistics.median(found) if found else None

    def ratio(self, num: str, *denominators: str) -> float | None:
        """Median of the per-repetition ratios num / sum(denominators)."""
        tops = self.values.get(num, [])
        bottoms = [self.values.get(d, []) for d in denominators]
        ratios = [
            top / total
            for i, top in enumerate(tops)
            if (total := sum(b[i] for b in bottoms if i < len(b))) > 0
        ]
        return statistics.median(ratios) if ratios else None


@dataclass(frozen=True)
class _Instant:
    """An instant recorded between two history transactions, with the table's state then."""

    at: datetime
    rows: int
    qty_sum: int


@dataclass
class _History:
    """The reconstruction table and what was recorded while building its history."""

    oid: int
    instants: list[_Instant]
    max_id: int  # keys 1..max_id existed at some point
    transactions: int

    @property
    def middle(self) -> _Instant:
        return self.instants[len(self.instants) // 2]


class _Bench:
    """One bench run on an autocommit connection, inside the scratch schema."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        conninfo: str,
        scratch: str,
        config: BenchConfig,
        progress: Progress,
    ) -> None:
        self.conn = conn
        self.conninfo = conninfo
        self.scratch = scratch
        self.config = config
        self.progress = progress
        self.samples = _Samples()
        self.notes: list[str] = []
        self.result: dict[str, Any] = {}
        self.can_checkpoint = True
        self.pgbench = find_pgbench(conn, config.pgbench) if config.use_pgbench else None

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.scratch, name)

    # -- phases ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.progress(f"bench: scratch schema {self.scratch}")
        self._setup()
        self._bulk_phase()
        self._single_row_phase()
        self._tpcb_phase()
        self._reconstruction_phase()
        return self._report()

    def _setup(self) -> None:
        self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.scratch)))
        for name in (PLAIN, AUDITED):
            self.conn.execute(sql.SQL(_TABLE_DDL).format(self.table(name)))
        self.conn.execute(sql.SQL(_BARE_LOG_DDL).format(self.table(BARE_LOG)))
        with translated_errors():
            self._set_audit(self._oid(AUDITED), on=True)
        try:
            self.conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            self.can_checkpoint = False
            self.notes.append(
                "CHECKPOINT not permitted for this role: checkpoints may fall inside measurements."
            )

    def _bulk_phase(self) -> None:
        size_before = self._audit_size()
        for rep in range(self.config.repetitions):
            self.progress(f"bulk statements, repetition {rep + 1}/{self.config.repetitions}")
            for op in OPERATIONS:
                for name in _order(rep):
                    self._bulk_step(op, name)
        self._storage(self._audit_size() - size_before)

    def _bulk_step(self, op: str, name: str) -> None:
        if op == "delete" and name == PLAIN:
            self._sample(f"{op}_{BARE_LOG}_ms", self._time_bare_log(op))
        self._sample(f"{op}_{name}_ms", self._time_statement(op, name))
        if op != "delete" and name == PLAIN:
            self._sample(f"{op}_{BARE_LOG}_ms", self._time_bare_log(op))

    def _single_row_phase(self) -> None:
        driver = "pgbench" if self.pgbench else "builtin"
        self.result["single_row_driver"] = driver
        if driver == "builtin":
            self.notes.append(
                "single-row UPDATEs were driven by this process (threads, one connection each): "
                "client overhead is part of every transaction, which understates the ratio's "
                "distance from 1 compared with pgbench."
            )
        self.progress(f"single-row UPDATEs: loading {self.config.rows} rows per table")
        for name in (PLAIN, AUDITED):
            self.conn.execute(_bulk_sql("insert", self.table(name), self.config.rows))
            self._vacuum(self.table(name), analyze=True)
        for rep in range(self.config.repetitions):
            for name in _order(rep):
                self._vacuum(self.table(name))
                self._checkpoint()
                tps = self._single_row_run(name)
                self._sample(f"single_row_{name}_tps", tps)

    def _single_row_run(self, name: str) -> float:
        if self.pgbench is None:
            stmt = _single_update_sql(self.table(name))
            return driver_tps(
                self.conninfo, stmt, self.config.rows, self.config.clients, self.config.duration
            )
        stmt = _single_update_sql(self.table(name), ":id")
        script = f"\\set id random(1, {self.config.rows})\n{stmt.as_string(self.conn)};\n"
        with tempfile.TemporaryDirectory(prefix="pgaudit-bench-") as tmp:
            path = Path(tmp) / "single_row_update.sql"
            path.write_text(script, encoding="utf-8")
            return self._pgbench_run(["-f", str(path)])

    def _tpcb_phase(self) -> None:
        if self.pgbench is None:
            self.notes.append("pgbench not found or disabled: TPC-B not measured.")
            return
        self.progress(f"TPC-B: pgbench -i -s {self.config.scale}")
        _run_pgbench(self.pgbench, ["-i", "-q", "-s", str(self.config.scale)], self._target(True))
        self.conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN hid bigserial PRIMARY KEY").format(
                self.table("pgbench_history")
            )
        )
        self.notes.append(
            "TPC-B: pgbench_history was given a key (hid bigserial PRIMARY KEY) for both the "
            "unaudited and the audited runs, because capture needs a key."
        )
        oids = [self._oid(t) for t in TPCB_TABLES]
        for rep in range(self.config.repetitions):
            for name in _order(rep):
                self._tpcb_run(name, oids)

    def _tpcb_run(self, name: str, oids: Sequence[int]) -> None:
        with translated_errors():
            for oid in oids:
                self._set_audit(oid, on=name == AUDITED)
        for table in TPCB_TABLES:
            self._vacuum(self.table(table))
        self._checkpoint()
        tps = self._pgbench_run([], search_path=True)
        self._sample(f"tpcb_{name}_tps", tps)

    def _reconstruction_phase(self) -> None:
        if not self.config.reconstruction:
            self.notes.append(
                "reconstruction phase disabled: row_at and table_at figures not measured."
            )
            return
        history = self._build_history()
        self._measure_row_at(history)
        self._measure_table_at(history)
        self.result["revert_ratio"] = self._measure_revert(history)

    def _build_history(self) -> _History:
        """The audited table ``history``: ``rows`` rows, then chunked UPDATEs (one transaction
        each, some also deleting and inserting rows) until it has ``history_rows`` audit rows."""
        cfg = self.config
        table = self.table(HISTORY)
        self.conn.execute(sql.SQL(_TABLE_DDL).format(table))
        oid = self._oid(HISTORY)
        with translated_errors():
            self._set_audit(oid, on=True)
        self.progress(
            f"reconstruction: {cfg.rows} rows, then updates up to {cfg.history_rows} audit rows"
        )
        changes = self.conn.execute(_insert_range_sql(table, 1, cfg.rows)).rowcount
        instants = [self._instant(table)]
        chunk = max(1, min(cfg.rows, cfg.history_rows // HISTORY_TRANSACTIONS))
        next_id, low, tx = cfg.rows + 1, 1, 0
        reported = 0
        while changes < cfg.history_rows or tx < MIN_HISTORY_TRANSACTIONS:
            high = low + chunk - 1
            with self.conn.transaction():
                changes += self.conn.execute(_history_update_sql(table, low, high)).rowcount
                if tx % CHURN_EVERY == CHURN_EVERY - 1:
                    changes += self.conn.execute(_history_delete_sql(table, low, high)).rowcount
                    added = max(1, chunk // 25)
                    last = next_id + added - 1
                    changes += self.conn.execute(_insert_range_sql(table, next_id, last)).rowcount
                    next_id = last + 1
            tx += 1
            instants.append(self._instant(table))
            low = high + 1 if high + 1 < next_id else 1
            if changes * 10 // cfg.history_rows > reported:
                reported = min(10, changes * 10 // cfg.history_rows)
                self.progress(f"  history: {changes} changes in {tx + 1} transactions")
        for name in (table, *_audit_tables()):
            self._vacuum(name, analyze=True)
        row = self.conn.execute(
            "SELECT count(*) FROM audit.change WHERE relid = %s", (oid,)
        ).fetchone()
        self.result["row_at_audit_rows"] = int(row[0]) if row else 0
        self.result["history_transactions"] = tx + 1
        return _History(oid=oid, instants=instants, max_id=next_id - 1, transactions=tx + 1)

    def _instant(self, table: sql.Identifier) -> _Instant:
        """Now (after the last commit), with the table's row count and sum(qty)."""
        row = self.conn.execute(
            sql.SQL("SELECT clock_timestamp(), count(*), coalesce(sum(qty), 0) FROM {}").format(
                table
            )
        ).fetchone()
        assert row is not None
        return _Instant(at=row[0], rows=int(row[1]), qty_sum=int(row[2]))

    def _measure_row_at(self, history: _History) -> None:
        samples = min(ROW_AT_SAMPLES, self.config.rows)
        self.progress(f"row-at: {samples} lookups at random keys and instants")
        rng = random.Random(4242)
        probes = [
            (
                history.oid,
                json.dumps({"id": rng.randint(1, history.max_id)}),
                rng.choice(history.instants).at,
            )
            for _ in range(ROW_AT_WARMUP + samples)
        ]
        query = "SELECT audit.row_at(%s::oid::regclass, %s::jsonb, %s::timestamptz)"
        times: list[float] = []
        found = 0
        with self.conn.cursor() as cur:
            for i, params in enumerate(probes):
                start = time.perf_counter()
                cur.execute(query, params, prepare=True)
                row = cur.fetchone()
                elapsed = (time.perf_counter() - start) * 1000.0
                if i >= ROW_AT_WARMUP:
                    times.append(elapsed)
                    found += row is not None and row[0] is not None
        if not found:
            raise AuditError("bench: audit.row_at found none of the rows looked up")
        self.result["row_at_samples"] = len(times)
        self.result["row_at_median_ms"] = _rounded(statistics.median(times), 3)
        self.result["row_at_p99_ms"] = _rounded(_percentile(times, 99), 3)
        self.progress(
            f"  row_at: median {statistics.median(times):.2f} ms,"
            f" p99 {_percentile(times, 99):.2f} ms"
        )

    def _measure_table_at(self, history: _History) -> None:
        mid = history.middle
        self.progress(f"table-at: {mid.rows} rows at the middle of the history vs the live table")
        source = self.table(HISTORY)
        copies = {"table_at": self.table("table_at_copy"), "table_at_live": self.table("live_copy")}
        selects = {
            "table_at": sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {})").format(
                source, sql.Literal(mid.at)
            ),
            "table_at_live": sql.SQL("SELECT * FROM {}").format(source),
        }
        for rep in range(self.config.repetitions):
            order = ("table_at", "table_at_live") if rep % 2 == 0 else ("table_at_live", "table_at")
            for name in order:
                self._checkpoint()
                create = sql.SQL("CREATE TABLE {} AS ").format(copies[name]) + selects[name]
                self._sample(f"{name}_ms", _timed(self.conn, create))
                if name == "table_at":
                    self._check_rebuilt(copies[name], mid)
                self.conn.execute(sql.SQL("DROP TABLE {}").format(copies[name]))
        self.result["table_at_rows"] = mid.rows

    def _check_rebuilt(self, copy: sql.Identifier, expected: _Instant) -> None:
        """The table rebuilt by table_at has the row count and sum(qty) recorded at T."""
        row = self.conn.execute(
            sql.SQL("SELECT count(*), coalesce(sum(qty), 0) FROM {}").format(copy)
        ).fetchone()
        got = (int(row[0]), int(row[1])) if row else None
        if got != (expected.rows, expected.qty_sum):
            raise AuditError(
                f"bench: audit.table_at at {expected.at} gave (rows, sum(qty)) = {got},"
                f" expected ({expected.rows}, {expected.qty_sum})"
            )

    def _measure_revert(self, history: _History) -> float | None:
        """Revert of an UPDATE of ``rows`` rows against the UPDATE itself (median ratio over the
        repetitions), each in a scratch schema of its own (see :func:`revert.bench_revert`)."""
        from pgaudit_tool.revert import bench_revert

        del history
        ratios = []
        for rep in range(self.config.repetitions):
            self.progress(f"revert: {self.config.rows} rows, repetition {rep + 1}")
            timing = bench_revert(self.conninfo, rows=self.config.rows)
            self._sample("revert_update_ms", float(timing["update_ms"]))
            self._sample("revert_ms", float(timing["revert_ms"]))
            ratios.append(float(timing["revert_ms"]) / max(float(timing["update_ms"]), 1e-3))
        self.notes.append(
            "revert_ratio: time to revert (plan, conflict check, apply, captured) the transaction of"
            " an UPDATE of every row, against that UPDATE; median over the repetitions."
        )
        return round(statistics.median(ratios), 3)

    # -- measurements ----------------------------------------------------------------------
    def _time_statement(self, op: str, name: str) -> float:
        self._checkpoint()
        elapsed = _timed(self.conn, _bulk_sql(op, self.table(name), self.config.rows))
        self._vacuum(self.table(name))
        if name == AUDITED:
            for audit_table in _audit_tables():
                self._vacuum(audit_table)
        return elapsed

    def _time_bare_log(self, op: str) -> float:
        self._checkpoint()
        elapsed = _timed(self.conn, _bare_log_sql(op, self.table(BARE_LOG), self.table(PLAIN)))
        self.conn.execute(sql.SQL("TRUNCATE {}").format(self.table(BARE_LOG)))
        return elapsed

    def _pgbench_run(self, args: list[str], search_path: bool = False) -> float:
        assert self.pgbench is not None
        seconds = max(1, round(self.config.duration))
        clients = str(self.config.clients)
        command = ["-n", "-c", clients, "-j", clients, "-T", str(seconds), *args]
        output = _run_pgbench(self.pgbench, command, self._target(search_path), seconds + 300)
        return parse_tps(output)

    def _target(self, search_path: bool) -> tuple[list[str], dict[str, str]]:
        return pgbench_target(self.conninfo, self.scratch if search_path else None)

    def _storage(self, grown: int) -> None:
        row = self.conn.execute(
            "SELECT count(*), avg(coalesce(pg_column_size(old), 0) + coalesce(pg_column_size(new), 0)),"
            " avg(pg_column_size(old)), avg(pg_column_size(new))"
            " FROM audit.change WHERE relid = %s",
            (self._oid(AUDITED),),
        ).fetchone()
        assert row is not None
        count = int(row[0])
        self.result["changes_measured"] = count
        self.result["audit_bytes_per_change"] = _rounded(grown / count if count else None, 1)
        self.result["image_bytes_per_change"] = _rounded(row[1], 1)
        self.result["old_image_bytes"] = _rounded(row[2], 1)
        self.result["new_image_bytes"] = _rounded(row[3], 1)

    def _sample(self, name: str, value: float) -> None:
        self.samples.add(name, value)
        unit = "TPS" if name.endswith("_tps") else "ms"
        self.progress(f"  {name.rsplit('_', 1)[0]}: {value:.1f} {unit}")

    # -- helpers ---------------------------------------------------------------------------
    def _oid(self, name: str) -> int:
        row = self.conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (self.scratch, name),
        ).fetchone()
        if row is None:
            raise AuditError(f"bench: table {self.scratch}.{name} is missing")
        return int(row[0])

    def _set_audit(self, oid: int, *, on: bool) -> None:
        if on:
            self.conn.execute("SELECT audit.enable(%s::oid::regclass)", (oid,))
        else:
            self.conn.execute("SELECT audit.disable(%s::oid::regclass)", (oid,))

    def _checkpoint(self) -> None:
        if self.can_checkpoint:
            self.conn.execute("CHECKPOINT")

    def _vacuum(self, table: sql.Identifier, analyze: bool = False) -> None:
        command = "VACUUM (ANALYZE) {}" if analyze else "VACUUM {}"
        self.conn.execute(sql.SQL(command).format(table))

    def _audit_size(self) -> int:
        row = self.conn.execute(
            "SELECT pg_total_relation_size(%s::regclass) + pg_total_relation_size(%s::regclass)",
            (f"{schema.SCHEMA}.change", f"{schema.SCHEMA}.transaction"),
        ).fetchone()
        return int(row[0]) if row else 0

    def _report(self) -> dict[str, Any]:
        s = self.samples
        result: dict[str, Any] = {key: None for key in RESULT_KEYS}
        result.update(self.result)
        for op in OPERATIONS:
            plain, audited, bare = (f"{op}_{w}_ms" for w in (PLAIN, AUDITED, BARE_LOG))
            result[f"{op}_ratio"] = _rounded(s.ratio(audited, plain), 3)
            result[f"{op}_limit_ratio"] = _rounded(s.ratio(audited, plain, bare), 3)
        limits = [result[f"{op}_limit_ratio"] for op in OPERATIONS]
        result["limit_ratio"] = (
            _rounded(statistics.median(limits), 3) if None not in limits else None
        )
        result["single_row_update_tps_ratio"] = _rounded(
            s.ratio("single_row_audited_tps", "single_row_plain_tps"), 3
        )
        result["tpcb_tps_ratio"] = _rounded(s.ratio("tpcb_audited_tps", "tpcb_plain_tps"), 3)
        for key in RAW_KEYS:
            result[key] = _rounded(s.median(key), 2 if key.endswith("_ms") else 1)
        if s.values.get("revert_ms"):
            result["revert_ms"] = _rounded(s.median("revert_ms"), 2)
            result["revert_update_ms"] = _rounded(s.median("revert_update_ms"), 2)
        if s.values.get("table_at_ms"):
            result["table_at_ratio"] = _rounded(s.ratio("table_at_ms", "table_at_live_ms"), 3)
            result["table_at_ms"] = _rounded(s.median("table_at_ms"), 2)
            result["table_at_live_ms"] = _rounded(s.median("table_at_live_ms"), 2)
        result.update(self._context())
        return result

    def _context(self) -> dict[str, Any]:
        cfg = self.config
        notes = [*self.notes, *_standard_notes(cfg)]
        return {
            "rows": cfg.rows,
            "history_rows": cfg.history_rows if cfg.reconstruction else None,
            "clients": cfg.clients,
            "duration": cfg.duration,
            "repetitions": cfg.repetitions,
            "scale": cfg.scale,
            "pgbench": self.pgbench,
            "server_version": _show(self.conn, "server_version"),
            "settings": {name: _show(self.conn, name) for name in SETTINGS},
            "notes": notes,
        }


def _order(rep: int) -> tuple[str, str]:
    """Which table goes first: flips at every repetition so that neither always goes first."""
    return (PLAIN, AUDITED) if rep % 2 == 0 else (AUDITED, PLAIN)


def _standard_notes(cfg: BenchConfig) -> list[str]:
    notes = [
        "Ratios are medians of per-repetition ratios; unaudited and audited runs alternate, "
        "the order flipping at each repetition.",
        "Bulk statements: each timed alone (autocommit) right after a CHECKPOINT; the table, and "
        "after audited statements audit.change and audit.transaction, are vacuumed afterwards, "
        "outside the timing.",
        "limit_ratio is the median of insert/update/delete_limit_ratio: audited time / (unaudited "
        "time + INSERT ... SELECT to_jsonb(t) of the same rows into a bare table). For UPDATE the "
        "bare log stores two images per row (old and new) in one row.",
        "audit_bytes_per_change: growth of audit.change + audit.transaction (heap, indexes, "
        "TOAST, maps) during the bulk phase / changes recorded then (inserts, updates, deletes).",
    ]
    if cfg.duration != max(1, round(cfg.duration)):
        notes.append(f"pgbench takes whole seconds: runs lasted {max(1, round(cfg.duration))} s.")
    if cfg.reconstruction:
        notes.extend(
            [
                "row_at: audit.row_at of random keys (some deleted or not yet inserted at the "
                "instant) at random instants recorded during the history, each timed alone "
                "(prepared, execute + fetch), after warm-up calls; p99 is the nearest rank.",
                "table_at_ratio: CREATE TABLE AS SELECT * FROM audit.table_at(NULL::t, T) / "
                "CREATE TABLE AS SELECT * FROM t, T in the middle of the history (every key has "
                "changed since when history_rows >= 3 x rows); median of per-repetition ratios, "
                "each statement after a CHECKPOINT.",
            ]
        )
    notes.extend(f"{key}: not measured yet." for key in NOT_MEASURED)
    return notes


def _percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile: the smallest value with ``percent``% of the values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _audit_tables() -> tuple[sql.Identifier, ...]:
    return (sql.Identifier(schema.SCHEMA, "change"), sql.Identifier(schema.SCHEMA, "transaction"))


def _rounded(value: Any, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _show(conn: psycopg.Connection[Any], setting: str) -> str | None:
    row = conn.execute("SELECT current_setting(%s, true)", (setting,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _timed(conn: psycopg.Connection[Any], stmt: sql.Composed) -> float:
    """Milliseconds taken by one autocommit statement."""
    start = time.perf_counter()
    conn.execute(stmt)
    return (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------- SQL

# 8 columns of mixed types; autovacuum off because the bench vacuums after each statement.
_TABLE_DDL = """CREATE TABLE {} (
    id         bigint PRIMARY KEY,
    qty        integer NOT NULL,
    label      text NOT NULL,
    amount     numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL,
    active     boolean NOT NULL,
    attrs      jsonb NOT NULL,
    ref        uuid NOT NULL
) WITH (autovacuum_enabled = off)"""

_BARE_LOG_DDL = "CREATE TABLE {} (old jsonb, new jsonb) WITH (autovacuum_enabled = off)"

_BULK_SQL = {
    "insert": "INSERT INTO {table} SELECT i, i % 1000, 'item ' || i, (i % 100000) / 100.0,"
    " timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second', i % 2 = 0,"
    " jsonb_build_object('kind', i % 10, 'tag', 'tag' || (i % 7)), md5(i::text)::uuid"
    " FROM generate_series({first}, {last}) AS i",
    "update": "UPDATE {table} SET qty = qty + 1, amount = amount + 1",
    "delete": "DELETE FROM {table}",
}

# The least a JSONB change log must write: the images of the rows, into a bare table.
_BARE_LOG_SQL = {
    "insert": "INSERT INTO {log} (new) SELECT to_jsonb(t) FROM {table} AS t",
    "update": "INSERT INTO {log} (old, new) SELECT to_jsonb(t), to_jsonb(t) FROM {table} AS t",
    "delete": "INSERT INTO {log} (old) SELECT to_jsonb(t) FROM {table} AS t",
}


def _bulk_sql(op: str, table: sql.Identifier, rows: int) -> sql.Composed:
    return sql.SQL(_BULK_SQL[op]).format(table=table, first=sql.Literal(1), last=sql.Literal(rows))


def _insert_range_sql(table: sql.Identifier, first: int, last: int) -> sql.Composed:
    """INSERT of the rows with ids first..last (the same values as the bulk INSERT)."""
    return sql.SQL(_BULK_SQL["insert"]).format(
        table=table, first=sql.Literal(first), last=sql.Literal(last)
    )


def _history_update_sql(table: sql.Identifier, low: int, high: int) -> sql.Composed:
    return sql.SQL(
        "UPDATE {} SET qty = qty + 1, amount = amount + 1 WHERE id BETWEEN {} AND {}"
    ).format(table, sql.Literal(low), sql.Literal(high))


def _history_delete_sql(table: sql.Identifier, low: int, high: int) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id BETWEEN {} AND {} AND id % 50 = 0").format(
        table, sql.Literal(low), sql.Literal(high)
    )


def _bare_log_sql(op: str, log: sql.Identifier, table: sql.Identifier) -> sql.Composed:
    return sql.SQL(_BARE_LOG_SQL[op]).format(log=log, table=table)


def _single_update_sql(table: sql.Identifier, key: str = "%s") -> sql.Composed:
    """UPDATE of one row by id; ``key``: the placeholder (``%s``, or ``:id`` for pgbench)."""
    return sql.SQL("UPDATE {} SET qty = qty + 1, amount = amount + 1 WHERE id = {}").format(
        table, sql.SQL(key)
    )


# --------------------------------------------------------------------------- built-in driver


def driver_tps(
    conninfo: str, stmt: sql.Composable, rows: int, clients: int, duration: float
) -> float:
    """TPS of ``clients`` threads, each on its own autocommit connection, running ``stmt``
    (one ``%s``: a random id in 1..rows) for ``duration`` seconds."""
    stop = threading.Event()
    ready = threading.Barrier(clients + 1)
    counts = [0] * clients
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_driver_client,
            args=(conninfo, stmt, rows, (ready, stop), (counts, i, errors)),
            daemon=True,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    try:
        ready.wait(timeout=60)
        start = time.perf_counter()
        stop.wait(duration)
    except threading.BrokenBarrierError:
        pass  # a client failed to connect: its error is in ``errors``
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def _driver_client(
    conninfo: str,
    stmt: sql.Composable,
    rows: int,
    sync: tuple[threading.Barrier, threading.Event],
    out: tuple[list[int], int, list[BaseException]],
) -> None:
    ready, stop = sync
    counts, slot, errors = out
    rng = random.Random(slot)
    try:
        with connect(conninfo) as conn:
            query = stmt.as_string(conn)
            ready.wait(timeout=60)
            while not stop.is_set():
                conn.execute(query, (rng.randint(1, rows),), prepare=True)
                counts[slot] += 1
    except BaseException as exc:  # reported by driver_tps
        errors.append(exc)
        stop.set()
        ready.abort()


# --------------------------------------------------------------------------- pgbench


def find_pgbench(conn: psycopg.Connection[Any], given: str | None = None) -> str | None:
    """The pgbench to use: ``given``, else the one of the server's major among the local
    installations, else ``pgbench`` on PATH, else any local installation's; None if none runs."""
    if given:
        if not _runs(given):
            raise InvalidInput(f"pgbench {given!r} cannot be run")
        return given
    major = conn.info.server_version // 10000
    installs = available_installs()
    candidates = [str(i.binary("pgbench")) for i in installs if i.major == major]
    candidates.append(shutil.which("pgbench") or "")
    candidates.extend(str(i.binary("pgbench")) for i in reversed(installs))
    return next((c for c in candidates if c and _runs(c)), None)


def _runs(path: str) -> bool:
    try:
        subprocess.run(
            [path, "--version"],
            capture_output=True,
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def pgbench_target(conninfo: str, search_path: str | None) -> tuple[list[str], dict[str, str]]:
    """pgbench's database argument (a conninfo, without password) and environment.

    The password goes through PGPASSWORD so it does not show in the process list;
    ``search_path`` is added to the connection's ``options`` (after PGOPTIONS or the
    conninfo's own options), which is how ``pgbench -i`` creates its tables in the scratch schema.
    """
    params: dict[str, Any] = conninfo_to_dict(conninfo) if conninfo else {}
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    if search_path is not None:
        base = str(params.get("options") or env.get("PGOPTIONS", ""))
        params["options"] = f"{base} -c search_path={search_path}".strip()
    target = make_conninfo("", **params)
    return ([target] if target else []), env


def _run_pgbench(
    pgbench: str,
    args: Sequence[str],
    target: tuple[list[str], dict[str, str]],
    timeout: float = 3600,
) -> str:
    """Run pgbench, return its standard output; AuditError with its messages when it fails."""
    argv, env = target
    try:
        done = subprocess.run(
            [pgbench, *args, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AuditError(f"pgbench did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        message = redact((done.stderr or done.stdout).strip()[-2000:])
        raise AuditError(f"pgbench failed (exit code {done.returncode}): {message}")
    return done.stdout


def parse_tps(output: str) -> float:
    """The TPS figure of a pgbench report (excluding connection time when both are given)."""
    lines = [line.strip() for line in output.splitlines()]
    for pattern in (_TPS, _ANY_TPS):
        for line in lines:
            match = pattern.match(line)
            if match:
                return float(match.group(1))
    raise AuditError(f"no 'tps = ' line in pgbench's output: {output.strip()[-500:]!r}")


# --------------------------------------------------------------------------- cleanup


def _cleanup(conninfo: str, scratch: str, progress: Progress, quiet: bool = False) -> None:
    """Remove the scratch schema and every audit row of its tables.

    With ``quiet`` (the bench already failed) a failure here is reported through
    ``progress`` instead of replacing the original error.
    """
    progress(f"bench: removing {scratch} and its audit rows")
    try:
        with connect(conninfo) as conn, conn.transaction():
            _remove_scratch(conn, scratch)
    except (AuditError, psycopg.Error) as exc:
        if not quiet:
            raise AuditError(
                f"bench: could not remove the scratch schema {scratch}: {exc}",
                hint=f"Disable audit on its tables, delete their audit rows and DROP SCHEMA {scratch} CASCADE.",
            ) from exc
        progress(f"bench: could not remove the scratch schema {scratch}: {exc}")


def _remove_scratch(conn: psycopg.Connection[Any], scratch: str) -> None:
    relids = _scratch_relids(conn, scratch)
    if relids:
        for relid in relids:
            conn.execute(
                "SELECT audit.disable(%s::oid::regclass) FROM pg_class WHERE oid = %s",
                (relid, relid),
            )
        _delete_audit_rows(conn, relids)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))


def _scratch_relids(conn: psycopg.Connection[Any], scratch: str) -> list[int]:
    """Tables of the scratch schema, and any registered under its name (dropped since)."""
    rows = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p')"
        " UNION SELECT relid FROM audit.tracked_table WHERE schema_name = %(s)s",
        {"s": scratch},
    ).fetchall()
    return [int(r[0]) for r in rows]


def _delete_audit_rows(conn: psycopg.Connection[Any], relids: list[int]) -> None:
    """Delete the audit rows of ``relids``: changes first, the registry last, then the
    transactions left without any change."""
    conn.execute(
        "CREATE TEMP TABLE pgaudit_bench_txids ON COMMIT DROP AS"
        " SELECT DISTINCT txid FROM audit.change WHERE relid = ANY(%s)",
        (relids,),
    )
    for table in _relid_tables(conn):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE relid = ANY(%s)").format(
                sql.Identifier(schema.SCHEMA, table)
            ),
            (relids,),
        )
    conn.execute(
        "DELETE FROM audit.transaction t USING pgaudit_bench_txids b WHERE t.txid = b.txid"
        " AND NOT EXISTS (SELECT FROM audit.change c WHERE c.txid = t.txid)"
    )


def _relid_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables of the audit schema keyed by table OID (``relid``): change first, registry last."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'relid' AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY c.relname = 'change' DESC, c.relname = 'tracked_table', c.relname",
        (schema.SCHEMA,),
    ).fetchall()
    return [str(r[0]) for r in rows]


# --------------------------------------------------------------------------- for people


def render_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``metric, value, target, status`` for ``--format table``: the ratios with their
    targets first, then storage, raw medians, the run's parameters and the notes."""
    rows = [
        _metric_row(key, result.get(key)) for key in RESULT_KEYS if key not in ("settings", "notes")
    ]
    settings = result.get("settings") or {}
    rows.extend(_metric_row(f"setting {name}", value) for name, value in settings.items())
    rows.extend(_metric_row("note", note) for note in result.get("notes") or [])
    return rows


def _metric_row(metric: str, value: Any) -> dict[str, Any]:
    target = TARGETS.get(metric)
    status = ""
    if target is not None:
        status = "not measured" if value is None else _verdict(float(value), *target)
    return {
        "metric": metric,
        "value": value,
        "target": f"{target[0]} {target[1]}" if target else None,
        "status": status,
    }


def _verdict(value: float, comparison: str, bound: float) -> str:
    ok = value <= bound if comparison == "<=" else value >= bound
    return "ok" if ok else "missed"
