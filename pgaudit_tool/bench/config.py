"""What the bench measures: its configuration, table names, tunables and result keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgaudit_tool.errors import InvalidInput

Progress = Callable[[str], None]

SCRATCH_PREFIX = "pgaudit_bench_"
PLAIN = "plain"
AUDITED = "audited"
BARE_LOG = "bare_log"
#: The throughput series of the bare JSONB log: the unaudited table plus the images' INSERT.
FLOOR = "floor"
HISTORY = "history"
OPERATIONS = ("insert", "update", "delete")
TPCB_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
#: Key prefixes of the two TPC-B series: at ``BenchConfig.scale`` and at ``large_scale``.
TPCB = "tpcb"
TPCB_LARGE = "tpcb_scale10"
#: The large TPC-B series' pgbench tables live in a schema of their own: the scratch schema's
#: name plus this suffix (pgbench -i cannot prefix its tables); removed with the scratch schema.
LARGE_SCHEMA_SUFFIX = "_large"


SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "full_page_writes")
#: Figures of the reconstruction phase (None when it is disabled).
RECONSTRUCTION_KEYS = (
    "row_at_median_ms",
    "row_at_p99_ms",
    "table_at_ratio",
    "history_stream_ratio",
    "table_at_stream_ratio",
    "history_stream_csv_ratio",
    "history_stream_json_ratio",
    "history_stream_jsonl_ratio",
    "stream_changes",
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
#: Goals of the project (issue 13): (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "insert_ratio": ("<=", 1.6),
    "update_ratio": ("<=", 3.0),
    "delete_ratio": ("<=", 10.0),
    "single_row_update_tps_ratio": (">=", 0.90),
    "tpcb_tps_ratio": (">=", 0.75),
    "tpcb_scale10_tps_ratio": (">=", 0.85),
    "audit_bytes_per_change": ("<=", 350),
    "history_stream_ratio": ("<=", 1.5),
    "table_at_stream_ratio": ("<=", 1.5),
    "watch_changes_per_s": (">=", 50_000),
    "watch_lag_ms_p95": ("<=", 2000),
    "report_s": ("<=", 10.0),
    "report_bytes": ("<=", 3_000_000),
    "archive_changes_per_s": (">=", 100_000),
    "archive_bytes_ratio": ("<=", 0.25),
    # Issue 16's targets, over 10,000,000 archived changes (the default archive_changes).
    "history_archive_ms": ("<=", 1000),
    "history_archive_actor_month_jsonl_ms": ("<=", 5000),
}
RATIO_KEYS = (
    "insert_ratio",
    "update_ratio",
    "delete_ratio",
    "single_row_update_tps_ratio",
    "tpcb_tps_ratio",
    "tpcb_scale10_tps_ratio",
    "limit_ratio",
    "insert_limit_ratio",
    "update_limit_ratio",
    "delete_limit_ratio",
    "insert_floor_ratio",
    "update_floor_ratio",
    "delete_floor_ratio",
    "single_row_update_floor_tps_ratio",
    "tpcb_floor_tps_ratio",
    "tpcb_scale10_floor_tps_ratio",
)
#: Ratio with a target -> the ratio a bare JSONB log alone has (see render_table).
FLOOR_KEYS = {
    **{f"{op}_ratio": f"{op}_floor_ratio" for op in OPERATIONS},
    "single_row_update_tps_ratio": "single_row_update_floor_tps_ratio",
    "tpcb_tps_ratio": "tpcb_floor_tps_ratio",
    "tpcb_scale10_tps_ratio": "tpcb_scale10_floor_tps_ratio",
}
RAW_KEYS = (
    *(f"{op}_{what}_ms" for op in OPERATIONS for what in (PLAIN, AUDITED, BARE_LOG)),
    *(
        f"{phase}_{what}_tps"
        for phase in ("single_row", TPCB, TPCB_LARGE)
        for what in (PLAIN, AUDITED, FLOOR)
    ),
)
#: Figures of the watch phase (None when it is disabled); see bench/watching.py.
WATCH_KEYS = (
    "watch_changes_per_s",
    "watch_lag_ms_p95",
    "watch_capture_tps_ratio",
    "watch_capture_tps_ratio_range",
    "guard_cost_us",
    "guard_cost_us_range",
    "guard_never_guarded_delta_us",
)
#: Figures of the report phase (None when it is disabled); see bench/reporting.py.
REPORT_KEYS = ("report_s", "report_bytes", "report_changes")
#: Figures of the archive reading phase (None when it is disabled or cannot run); see
#: bench/archive_reading.py.
ARCHIVE_READING_KEYS = (
    "history_archive_ms",
    "history_archive_rows",
    "history_archive_actor_month_jsonl_ms",
    "history_archive_actor_month_ms",
    "history_archive_actor_month_rows",
    "row_at_archive_ms",
    "blame_archive_ms",
    "archived_changes",
)
#: Every key of :func:`~pgaudit_tool.bench.run_bench`'s result, in display order.
RESULT_KEYS = (
    *RATIO_KEYS,
    "audit_bytes_per_change",
    "image_bytes_per_change",
    "old_image_bytes",
    "new_image_bytes",
    "changes_measured",
    "live_bytes_per_change",
    "archive_changes_per_s",
    "archive_bytes_per_change",
    "archive_bytes_ratio",
    *ARCHIVE_READING_KEYS,
    *RAW_KEYS,
    *RECONSTRUCTION_KEYS,
    *WATCH_KEYS,
    *REPORT_KEYS,
    "rows",
    "history_rows",
    "clients",
    "duration",
    "repetitions",
    "scale",
    "large_scale",
    "single_row_driver",
    "pgbench",
    "server_version",
    "settings",
    "notes",
)


@dataclass
class BenchConfig:
    """What to measure. ``pgbench``: path of the binary (None: the one of the server's major
    among the local installations, else ``pgbench`` on PATH); ``use_pgbench=False`` forces the
    built-in single-row driver and skips TPC-B. ``scale``: pgbench's TPC-B scale factor;
    ``large_scale``: that of the second TPC-B series (``tpcb_scale10_*``, in a schema of its
    own), which ``large_tpcb=False`` skips (its figures are None).
    ``history_rows``: audit rows built on the reconstruction table before row_at is measured;
    ``reconstruction=False`` skips that phase (its figures are None). ``report_changes``:
    changes the report phase writes and reports on (``report_s``); ``reporting=False`` skips
    it. ``archive_changes``: changes in the archive the archive reading phase reads
    (``history_archive_*``, in a database of its own); ``archive_reading=False`` skips it."""

    rows: int = 100_000
    clients: int = 2
    duration: float = 10.0
    repetitions: int = 3
    pgbench: str | None = None
    use_pgbench: bool = True
    scale: int = 1
    large_scale: int = 10
    large_tpcb: bool = True
    history_rows: int = 1_000_000
    reconstruction: bool = True
    watch_changes: int = 1_000_000
    watching: bool = True
    report_changes: int = 1_000_000
    reporting: bool = True
    archive_changes: int = 10_000_000
    archive_reading: bool = True


def validate(config: BenchConfig) -> None:
    """InvalidInput naming every setting of ``config`` that is not positive."""
    problems = [
        name
        for name, ok in (
            ("rows", config.rows >= 1),
            ("clients", config.clients >= 1),
            ("duration", config.duration > 0),
            ("repetitions", config.repetitions >= 1),
            ("scale", config.scale >= 1),
            ("large_scale", config.large_scale >= 1),
            ("history_rows", config.history_rows >= 1),
            ("watch_changes", config.watch_changes >= 1),
            ("report_changes", config.report_changes >= 1),
            ("archive_changes", config.archive_changes >= 1),
        )
        if not ok
    ]
    if problems:
        raise InvalidInput(f"bench: {', '.join(problems)} must be positive")


def scratch_schemas(scratch: str) -> tuple[str, str]:
    """The schemas of a bench run whose scratch schema is ``scratch``: the large TPC-B series'
    (it may not exist), then ``scratch`` itself."""
    return scratch + LARGE_SCHEMA_SUFFIX, scratch
