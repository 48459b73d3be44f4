"""``pgaudit-tool bench``: what auditing costs, measured on the connected database.

Everything runs in a scratch schema ``pgaudit_bench_<random>`` (the large TPC-B series in
``pgaudit_bench_<random>_large``) that is always removed at the end, also after an error or
Ctrl-C: capture is disabled on its tables, the audit rows they produced are deleted
(``audit.change``, ``audit.table_layout``, ``audit.tracked_table`` and every other table of the
audit schema with a ``relid`` column, then the ``audit.transaction`` rows left without changes),
and the schema is dropped.  So the bench needs the audit schema
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
  ``insert_floor_ratio``, ``update_floor_ratio``, ``delete_floor_ratio`` are (unaudited time +
  bare log time) / unaudited time: the ratio a bare JSONB log alone has, below which no capture
  that stores the images can go (a target under it is out of reach).
* single-row ``UPDATE`` by primary key from ``clients`` concurrent clients for ``duration``
  seconds, with pgbench when available, else with threads of this process:
  ``single_row_update_tps_ratio`` (audited TPS / unaudited TPS).
* pgbench's built-in TPC-B-like workload with its four tables audited: ``tpcb_tps_ratio`` at
  ``scale`` (default 1), then ``tpcb_scale10_tps_ratio`` the same way at ``large_scale``
  (default 10; ``large_tpcb=False`` skips it), its pgbench tables in a second scratch schema
  ``pgaudit_bench_<random>_large`` (removed with the first).
  pgbench_history has no key, so it gets ``hid bigserial PRIMARY KEY`` for every run.
  Without pgbench both TPS ratios that need it are None (the single-row one falls back to the
  built-in driver, TPC-B is not run).
* the throughput floors: the same workloads on the unaudited tables, each write also storing
  the row's JSONB images in ``bare_log`` in the same statement (a CTE: UPDATE old and new,
  INSERT new; for TPC-B a custom pgbench script equal to the built-in one otherwise), a third
  series of the same repetitions, always between the unaudited and audited runs.
  ``single_row_update_floor_tps_ratio``, ``tpcb_floor_tps_ratio``,
  ``tpcb_scale10_floor_tps_ratio``: its TPS / unaudited TPS,
  the most any capture storing the images can keep (a target above it is out of reach).
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
* ``history_stream_ratio``, ``table_at_stream_ratio``: writing history (csv, json, jsonl) and
  table-at (csv) out against psql's COPY of the same rows; see :mod:`pgaudit_tool.bench.streaming`.
* ``report_s``, ``report_bytes``: the html report of ``report_changes`` changes over 20 tables
  and 50 actors, and its size; see :mod:`pgaudit_tool.bench.reporting`.
"""

from __future__ import annotations

from pgaudit_tool.bench.config import AUDITED as AUDITED
from pgaudit_tool.bench.config import BARE_LOG as BARE_LOG
from pgaudit_tool.bench.config import CHURN_EVERY as CHURN_EVERY
from pgaudit_tool.bench.config import FLOOR as FLOOR
from pgaudit_tool.bench.config import FLOOR_KEYS as FLOOR_KEYS
from pgaudit_tool.bench.config import HISTORY as HISTORY
from pgaudit_tool.bench.config import HISTORY_TRANSACTIONS as HISTORY_TRANSACTIONS
from pgaudit_tool.bench.config import MIN_HISTORY_TRANSACTIONS as MIN_HISTORY_TRANSACTIONS
from pgaudit_tool.bench.config import OPERATIONS as OPERATIONS
from pgaudit_tool.bench.config import PLAIN as PLAIN
from pgaudit_tool.bench.config import RATIO_KEYS as RATIO_KEYS
from pgaudit_tool.bench.config import RAW_KEYS as RAW_KEYS
from pgaudit_tool.bench.config import RECONSTRUCTION_KEYS as RECONSTRUCTION_KEYS
from pgaudit_tool.bench.config import RESULT_KEYS, TARGETS, BenchConfig
from pgaudit_tool.bench.config import ROW_AT_SAMPLES as ROW_AT_SAMPLES
from pgaudit_tool.bench.config import ROW_AT_WARMUP as ROW_AT_WARMUP
from pgaudit_tool.bench.config import SCRATCH_PREFIX as SCRATCH_PREFIX
from pgaudit_tool.bench.config import SETTINGS as SETTINGS
from pgaudit_tool.bench.config import TPCB_TABLES as TPCB_TABLES
from pgaudit_tool.bench.config import Progress as Progress
from pgaudit_tool.bench.driver import driver_tps as driver_tps
from pgaudit_tool.bench.pgbench import find_pgbench
from pgaudit_tool.bench.pgbench import parse_tps as parse_tps
from pgaudit_tool.bench.pgbench import pgbench_target as pgbench_target
from pgaudit_tool.bench.render import render_table
from pgaudit_tool.bench.run import run_bench

__all__ = ["RESULT_KEYS", "TARGETS", "BenchConfig", "find_pgbench", "render_table", "run_bench"]
