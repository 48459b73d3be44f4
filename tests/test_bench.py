"""``pgaudit_tool.bench``: runs on a tiny N, reports every key, leaves nothing behind.

No timing assertions: the figures of a 200-row run on a shared machine mean nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import Audit
from pgaudit_tool.bench import (
    FLOOR_KEYS,
    RECONSTRUCTION_KEYS,
    RESULT_KEYS,
    SETTINGS,
    TARGETS,
    BenchConfig,
    parse_tps,
    pgbench_target,
    render_table,
    run_bench,
)
from pgaudit_tool.bench.config import RATIO_KEYS, REPORT_KEYS, WATCH_KEYS
from pgaudit_tool.bench.render import COMPARED_WITH, TABLE_COLUMNS
from pgaudit_tool.bench.sql import TABLE_DDL
from pgaudit_tool.bench.stats import percentile
from pgaudit_tool.errors import InvalidInput, NotInstalled


def tiny(**options: Any) -> BenchConfig:
    """The smallest bench that measures everything (the "scale 10" TPC-B series at scale 2)."""
    settings: dict[str, Any] = {
        "rows": 200,
        "clients": 2,
        "duration": 1.0,
        "repetitions": 1,
        "large_scale": 2,
        "history_rows": 2000,
        "watch_changes": 2000,
        "report_changes": 2000,
        "archive_changes": 20_000,
    }
    return BenchConfig(**{**settings, **options})


#: The TPC-B figures, of both series: None without pgbench.
TPCB_KEYS = tuple(
    key
    for prefix in ("tpcb", "tpcb_scale10")
    for key in (
        f"{prefix}_tps_ratio",
        f"{prefix}_floor_tps_ratio",
        f"{prefix}_plain_tps",
        f"{prefix}_audited_tps",
        f"{prefix}_floor_tps",
    )
)


ALWAYS_MEASURED = (
    "insert_ratio",
    "update_ratio",
    "delete_ratio",
    "single_row_update_tps_ratio",
    "limit_ratio",
    "insert_limit_ratio",
    "update_limit_ratio",
    "delete_limit_ratio",
    "insert_floor_ratio",
    "update_floor_ratio",
    "delete_floor_ratio",
    "single_row_update_floor_tps_ratio",  # the built-in driver measures it too
    "single_row_plain_tps",
    "single_row_floor_tps",
    "single_row_audited_tps",
    "audit_bytes_per_change",
    "image_bytes_per_change",
    "watch_changes_per_s",
    "watch_capture_tps_ratio",
    "watch_lag_ms_p95",
)


def _leftovers(dsn: str) -> dict[str, Any]:
    """What a bench could leave behind: scratch schemas and audit rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgaudit\\_bench\\_%'),"
            " (SELECT count(*) FROM audit.change),"
            " (SELECT count(*) FROM audit.transaction),"
            " (SELECT array_agg(table_name ORDER BY table_name) FROM audit.tracked_table),"
            " (SELECT count(*) FROM audit.tracked_table t WHERE t.schema_name LIKE 'pgaudit\\_bench\\_%'),"
            " (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            "   WHERE n.nspname = 'audit' AND p.proname LIKE 'capture\\_%'),"
            " (SELECT count(*) FROM pg_database WHERE datname LIKE 'pgaudit\\_bench\\_%')"
        ).fetchone()
    assert row is not None
    keys = (
        "schemas",
        "changes",
        "transactions",
        "tracked",
        "bench_tracked",
        "capture_functions",
        "databases",
    )
    return dict(zip(keys, row, strict=True))


@pytest.fixture
def history_before(audit: Audit) -> dict[str, Any]:
    """An audited table of the user's, with history the bench must not touch."""
    audit.conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, amount int)")
    audit.enable("public.orders")
    audit.conn.execute("INSERT INTO public.orders VALUES (1, 10), (2, 20)")
    audit.conn.execute("UPDATE public.orders SET amount = amount + 1")
    return _leftovers(audit.conninfo)


def _check_reconstruction(result: dict[str, Any], config: BenchConfig) -> None:
    if not config.reconstruction:
        assert all(result[key] is None for key in RECONSTRUCTION_KEYS)
        assert result["history_rows"] is None
        assert any("reconstruction phase disabled" in note for note in result["notes"])
        return
    for key in (
        "row_at_median_ms",
        "row_at_p99_ms",
        "table_at_ratio",
        "table_at_ms",
        "revert_ratio",
        "revert_ms",
        "history_stream_ratio",
        "history_stream_csv_ratio",
        "history_stream_json_ratio",
        "history_stream_jsonl_ratio",
        "table_at_stream_ratio",
    ):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["history_stream_ratio"] == max(
        result[f"history_stream_{fmt}_ratio"] for fmt in ("csv", "json", "jsonl")
    )
    assert result["stream_changes"] == min(100_000, config.history_rows)
    assert isinstance(result["table_at_live_ms"], float) and result["table_at_live_ms"] > 0
    assert result["row_at_p99_ms"] >= result["row_at_median_ms"]
    assert result["row_at_audit_rows"] >= config.history_rows
    assert result["row_at_samples"] == min(200, config.rows)
    # the middle of the history: past the first churn transaction (deletes and inserts)
    assert result["table_at_rows"] > 0 and result["table_at_rows"] != config.rows
    assert result["history_transactions"] > 4
    assert result["history_rows"] == config.history_rows


def _check_archive_reading(result: dict[str, Any], config: BenchConfig) -> None:
    """The synthetic archive's row of ``t`` (key 7) and actor's month, counted here."""
    n = config.archive_changes
    row = sum(1 for i in range(0, n, 20) if (i // 20) % 2000 == 7)
    month = sum(1 for i in range(n) if (i // 10) % 50 == 7)
    assert result["archived_changes"] == n
    assert (result["history_archive_rows"], result["history_archive_actor_month_rows"]) == (
        row,
        month,
    )
    for key in ("history_archive_ms", "history_archive_actor_month_jsonl_ms"):
        assert result[key] > 0, key
    assert result["history_archive_actor_month_ms"] > 0
    assert result["row_at_archive_ms"] > 0 and result["blame_archive_ms"] > 0


def _check_result(result: dict[str, Any], config: BenchConfig) -> None:
    assert set(result) == set(RESULT_KEYS)
    if config.archive_reading:
        _check_archive_reading(result, config)
    if config.reporting:
        assert result["report_changes"] == max(1, config.report_changes // 50) * 50
        assert result["report_s"] > 0 and result["report_bytes"] > 10_000
    _check_reconstruction(result, config)
    for key in ALWAYS_MEASURED:
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    assert result["changes_measured"] == 3 * config.rows * config.repetitions
    # A change stores its images and more (key, context columns, indexes).
    assert result["audit_bytes_per_change"] > result["image_bytes_per_change"] > 0
    for op in ("insert", "update", "delete"):  # the bare log's time is added to the statement's
        assert result[f"{op}_floor_ratio"] > 1.0
    assert (result["rows"], result["clients"], result["repetitions"]) == (
        config.rows,
        config.clients,
        config.repetitions,
    )
    assert result["server_version"]
    assert set(result["settings"]) == set(SETTINGS)
    assert all(isinstance(v, str) for v in result["settings"].values())
    assert all(isinstance(note, str) for note in result["notes"])


@pytest.mark.one_major  # minutes of measuring; the bench's SQL runs on every major elsewhere
def test_bench_reports_every_key_and_cleans_up(
    audit: Audit, dsn: str, history_before: dict[str, Any]
) -> None:
    messages: list[str] = []
    config = tiny()
    result = run_bench(dsn, config, messages.append)
    _check_result(result, config)
    assert (result["scale"], result["large_scale"]) == (1, 2)
    if result["pgbench"] is None:  # no pgbench on this machine
        assert result["single_row_driver"] == "builtin"
        assert all(result[key] is None for key in TPCB_KEYS)
    else:
        assert result["single_row_driver"] == "pgbench"
        for key in TPCB_KEYS:
            assert isinstance(result[key], float) and result[key] > 0, key
        assert any("pgbench_history" in note for note in result["notes"])
        assert any("tpcb_scale10_*: the same TPC-B series at scale 2" in n for n in result["notes"])
        assert any(m.startswith("TPC-B: pgbench -i -s 2 (in pgaudit_bench_") for m in messages)
        assert any(m.strip().startswith("tpcb_scale10_audited:") for m in messages)
    assert any("bulk statements" in m for m in messages)
    assert any(m.startswith("row-at") for m in messages)
    assert any(m.startswith("table-at") for m in messages)
    assert _leftovers(dsn) == history_before
    assert history_before["changes"] == 4 and history_before["tracked"] == ["orders"]


@pytest.mark.one_major  # minutes of measuring; the bench's SQL runs on every major elsewhere
def test_bench_own_driver_without_pgbench(audit: Audit, dsn: str) -> None:
    config = tiny(use_pgbench=False, reconstruction=False, large_tpcb=False)
    result = run_bench(dsn, config)
    _check_result(result, config)
    assert result["single_row_driver"] == "builtin"
    assert result["pgbench"] is None
    assert all(result[key] is None for key in TPCB_KEYS)
    assert result["large_scale"] is None  # the large series is off
    assert any("TPC-B not measured" in note for note in result["notes"])
    assert _leftovers(dsn)["schemas"] == 0
    # Again: the audit tables now hold the free space of the first run's deleted rows, which the
    # second run's rows fill; storage is measured the same (their growth would be about zero).
    again = run_bench(dsn, config)
    _check_result(again, config)
    assert again["audit_bytes_per_change"] == pytest.approx(result["audit_bytes_per_change"], 0.2)


def test_bench_cleans_up_after_interrupt(audit: Audit, dsn: str) -> None:
    def interrupt(message: str) -> None:
        if message.startswith("single-row"):  # the audited table has history by now
            raise KeyboardInterrupt

    config = tiny(use_pgbench=False)
    with pytest.raises(KeyboardInterrupt):
        run_bench(dsn, config, interrupt)
    assert _leftovers(dsn) == {
        "schemas": 0,
        "changes": 0,
        "transactions": 0,
        "tracked": None,
        "bench_tracked": 0,
        "capture_functions": 0,
        "databases": 0,
    }


def test_bench_needs_the_audit_schema(dsn: str) -> None:
    with pytest.raises(NotInstalled):
        run_bench(dsn, tiny())


def test_bench_rejects_bad_config() -> None:
    with pytest.raises(InvalidInput, match="rows, repetitions"):
        run_bench("", BenchConfig(rows=0, repetitions=0))
    with pytest.raises(InvalidInput, match="history_rows"):
        run_bench("", BenchConfig(history_rows=0))
    with pytest.raises(InvalidInput, match="large_scale must be positive"):
        run_bench("", BenchConfig(large_scale=0))
    with pytest.raises(InvalidInput, match="archive_changes must be positive"):
        run_bench("", BenchConfig(archive_changes=0))


def test_tpcb_plan() -> None:
    """Scale 1 in the scratch schema, then the large scale in its own (removed with it)."""
    from pgaudit_tool.bench.config import scratch_schemas
    from pgaudit_tool.bench.throughput import TpcbSeries, tpcb_plan

    assert tpcb_plan(BenchConfig(), "pgaudit_bench_ab") == [
        TpcbSeries("tpcb", 1, "pgaudit_bench_ab"),
        TpcbSeries("tpcb_scale10", 10, "pgaudit_bench_ab_large"),
    ]
    assert tpcb_plan(BenchConfig(scale=3, large_scale=2), "s")[1] == (
        TpcbSeries("tpcb_scale10", 2, "s_large")
    )
    assert tpcb_plan(BenchConfig(large_tpcb=False), "s") == [TpcbSeries("tpcb", 1, "s")]
    assert scratch_schemas("pgaudit_bench_ab") == ("pgaudit_bench_ab_large", "pgaudit_bench_ab")


# --------------------------------------------------------------------------- no database


def test_render_table_rows() -> None:
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    result.update(
        insert_ratio=1.2,
        update_ratio=3.5,
        delete_ratio=12.0,
        delete_floor_ratio=10.4,
        single_row_update_tps_ratio=0.9,
        tpcb_scale10_tps_ratio=0.86,
        audit_bytes_per_change=351.0,
        image_bytes_per_change=120.0,
        settings={"fsync": "on"},
        notes=["a note"],
    )
    rows = {row["metric"]: row for row in render_table(result)}
    assert set(TABLE_COLUMNS) == set(rows["insert_ratio"])
    assert rows["insert_ratio"]["status"] == "ok"
    assert rows["update_ratio"]["status"] == "missed"
    # A target below what a bare JSONB log alone costs is said to be out of reach.
    assert rows["delete_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 10.4x)"
    )
    assert rows["delete_floor_ratio"]["value"] == 10.4
    assert rows["single_row_update_tps_ratio"] == {
        "metric": "single_row_update_tps_ratio",
        "value": 0.9,
        "target": ">= 0.9",
        "status": "ok",
        "compared_with": "unaudited, same run",
    }
    assert rows["tpcb_scale10_tps_ratio"]["target"] == ">= 0.85"
    assert rows["tpcb_scale10_tps_ratio"]["status"] == "ok"
    assert rows["tpcb_tps_ratio"]["status"] == "not measured"
    assert rows["tpcb_scale10_floor_tps_ratio"]["status"] == ""
    assert rows["tpcb_floor_tps_ratio"]["value"] is None
    # Storage has a target too, not a ratio: compared with the images alone.
    assert rows["audit_bytes_per_change"]["target"] == "<= 350"
    assert rows["audit_bytes_per_change"]["status"] == "missed"
    assert rows["audit_bytes_per_change"]["compared_with"] == (
        "images only (image_bytes_per_change)"
    )
    assert rows["setting fsync"]["value"] == "on"
    assert rows["setting fsync"]["compared_with"] is None
    assert rows["note"]["value"] == "a note"
    assert set(TARGETS) <= set(rows)


def test_render_table_says_what_each_figure_is_compared_with() -> None:
    rows = {row["metric"]: row for row in render_table(dict.fromkeys(RESULT_KEYS))}
    # Every ratio and every figure with a target says where its comparison point comes from.
    assert set(RATIO_KEYS) | set(TARGETS) <= set(COMPARED_WITH) <= set(RESULT_KEYS)
    for key in ("insert_ratio", "tpcb_tps_ratio", "tpcb_scale10_tps_ratio"):
        assert rows[key]["compared_with"] == "unaudited, same run"
    for key in ("delete_floor_ratio", "tpcb_floor_tps_ratio", "tpcb_scale10_floor_tps_ratio"):
        assert rows[key]["compared_with"] == "bare JSONB log (floor) vs unaudited, same run"
    assert rows["update_limit_ratio"]["compared_with"] == "unaudited + bare JSONB log, same run"
    assert rows["watch_changes_per_s"]["compared_with"] == "absolute"
    assert rows["tpcb_scale10_plain_tps"]["compared_with"] is None


def test_render_table_throughput_floors() -> None:
    """A TPS target above what a bare JSONB log alone keeps is out of reach; one below it is
    only missed; a floor that was not measured changes nothing."""
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    result.update(
        single_row_update_tps_ratio=0.55,
        single_row_update_floor_tps_ratio=0.7,
        tpcb_tps_ratio=0.7,
        tpcb_floor_tps_ratio=0.9,
        tpcb_scale10_tps_ratio=0.8,
        tpcb_scale10_floor_tps_ratio=0.95,
        update_ratio=3.5,
        update_floor_ratio=1.9,
    )
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["single_row_update_tps_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 0.7 of the unaudited TPS)"
    )
    assert rows["tpcb_tps_ratio"]["status"] == "missed"
    assert rows["tpcb_scale10_tps_ratio"]["status"] == "missed"
    assert rows["update_ratio"]["status"] == "missed"
    assert rows["single_row_update_floor_tps_ratio"]["value"] == 0.7
    assert rows["tpcb_floor_tps_ratio"]["value"] == 0.9
    assert rows["tpcb_scale10_floor_tps_ratio"]["value"] == 0.95
    result.update(tpcb_tps_ratio=0.6, tpcb_floor_tps_ratio=0.74, update_floor_ratio=3.1)
    result.update(tpcb_scale10_floor_tps_ratio=0.84)
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["tpcb_tps_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 0.74 of the unaudited TPS)"
    )
    assert rows["tpcb_scale10_tps_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 0.84 of the unaudited TPS)"
    )
    assert rows["update_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 3.1x)"
    )
    result.update(single_row_update_tps_ratio=0.95, single_row_update_floor_tps_ratio=None)
    result.update(tpcb_tps_ratio=0.6, tpcb_floor_tps_ratio=None)
    result.update(tpcb_scale10_tps_ratio=0.6, tpcb_scale10_floor_tps_ratio=None)
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["single_row_update_tps_ratio"]["status"] == "ok"
    assert rows["tpcb_tps_ratio"]["status"] == "missed"
    assert rows["tpcb_scale10_tps_ratio"]["status"] == "missed"


def test_every_ratio_target_has_a_floor() -> None:
    # Storage, streaming and archive compare with something else than a floor (images, psql's
    # COPY, the live log), or with nothing (times of reading through an archive).
    others = {
        "audit_bytes_per_change",
        "history_stream_ratio",
        "table_at_stream_ratio",
        "archive_changes_per_s",
        "archive_bytes_ratio",
        "history_archive_ms",
        "history_archive_actor_month_jsonl_ms",
    }
    assert set(FLOOR_KEYS) == set(TARGETS) - set(WATCH_KEYS) - set(REPORT_KEYS) - others
    assert set(FLOOR_KEYS) <= set(RATIO_KEYS)
    assert set(FLOOR_KEYS.values()) <= set(RATIO_KEYS)
    assert set(TARGETS) <= set(RESULT_KEYS)


def test_issue_13_targets() -> None:
    assert TARGETS["single_row_update_tps_ratio"] == (">=", 0.90)
    assert TARGETS["tpcb_scale10_tps_ratio"] == (">=", 0.85)
    assert TARGETS["tpcb_tps_ratio"] == (">=", 0.75)
    assert TARGETS["insert_ratio"] == ("<=", 1.6)
    assert TARGETS["update_ratio"] == ("<=", 3.0)
    assert TARGETS["delete_ratio"] == ("<=", 10.0)
    assert TARGETS["audit_bytes_per_change"] == ("<=", 350)


PGBENCH_15 = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
number of transactions actually processed: 2617
latency average = 0.763 ms
initial connection time = 3.101 ms
tps = 2618.046155 (without initial connection time)
"""

PGBENCH_13 = """\
tps = 1000.5 (including connections establishing)
tps = 1010.25 (excluding connections establishing)
"""


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 201)]
    assert percentile(values, 99) == 198.0
    assert percentile(values, 50) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0, 9.0], 100) == 9.0


def test_parse_tps() -> None:
    assert parse_tps(PGBENCH_15) == pytest.approx(2618.046155)
    assert parse_tps(PGBENCH_13) == pytest.approx(1010.25)


def test_pgbench_target_hides_the_password() -> None:
    argv, env = pgbench_target(
        "host=db port=5433 user=u password=s3cret dbname=shop options='-c work_mem=8MB'",
        "pgaudit_bench_x",
    )
    assert env["PGPASSWORD"] == "s3cret"
    assert len(argv) == 1 and "s3cret" not in argv[0]
    params = conninfo_to_dict(argv[0])
    assert params["options"] == "-c work_mem=8MB -c search_path=pgaudit_bench_x"
    assert params["dbname"] == "shop"


@pytest.mark.one_major  # minutes of measuring; the bench's SQL runs on every major elsewhere
def test_bench_command_prints_json_data_and_progress_on_stderr(audit: Audit, dsn: str) -> None:
    import json

    from click.testing import CliRunner

    from pgaudit_tool.cli import main

    result = CliRunner().invoke(
        main,
        [
            "--dsn",
            dsn,
            "bench",
            "--history-rows",
            "500",
            "--rows",
            "100",
            "--duration",
            "1",
            "--repetitions",
            "1",
            "--scale",
            "2",
            "--large-scale",
            "3",
            "--no-pgbench",
            "--watch-changes",
            "2000",
            "--report-changes",
            "2000",
            "--archive-changes",
            "20000",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(RESULT_KEYS) <= set(data)
    assert data["archived_changes"] == 20000 and data["history_archive_ms"] > 0
    assert data["insert_ratio"] > 0 and data["tpcb_tps_ratio"] is None
    assert data["row_at_median_ms"] > 0 and data["table_at_ratio"] > 0
    assert data["scale"] == 2 and data["large_scale"] == 3
    assert data["tpcb_scale10_tps_ratio"] is None
    assert result.stderr.strip(), "progress goes to stderr"


def test_bench_command_large_scale_options_and_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """--large-scale / --no-large-scale reach BenchConfig; the table has the compared_with
    column (no database: the bench itself is replaced)."""
    from click.testing import CliRunner

    from pgaudit_tool import cli

    configs: list[BenchConfig] = []

    class FakeAudit:
        def bench(self, config: BenchConfig, progress: Any = None) -> dict[str, Any]:
            configs.append(config)
            return {**dict.fromkeys(RESULT_KEYS), "tpcb_scale10_tps_ratio": 0.9, "notes": []}

    monkeypatch.setattr(cli._State, "audit", lambda self: FakeAudit())
    runner = CliRunner()
    done = runner.invoke(cli.main, ["bench", "--large-scale", "20"])
    assert done.exit_code == 0, done.output
    assert (configs[-1].large_scale, configs[-1].large_tpcb) == (20, True)
    header = done.stdout.splitlines()[0].split("|")
    assert [h.strip() for h in header] == list(TABLE_COLUMNS)
    line = next(x for x in done.stdout.splitlines() if "tpcb_scale10_tps_ratio " in x)
    assert ">= 0.85" in line and "ok" in line and "unaudited, same run" in line
    done = runner.invoke(cli.main, ["bench", "--no-large-scale"])
    assert done.exit_code == 0, done.output
    assert (configs[-1].large_scale, configs[-1].large_tpcb) == (10, False)
    assert (configs[-1].archive_changes, configs[-1].archive_reading) == (10_000_000, True)
    done = runner.invoke(cli.main, ["bench", "--archive-changes", "5000", "--no-archive-reading"])
    assert done.exit_code == 0, done.output
    assert (configs[-1].archive_changes, configs[-1].archive_reading) == (5000, False)
    assert runner.invoke(cli.main, ["bench", "--large-scale", "0"]).exit_code == 2
    help_text = runner.invoke(cli.main, ["bench", "--help"]).stdout
    assert "--large-scale" in help_text and "--no-large-scale" in help_text


def test_backend_cpu_measures_capture_side_by_side(audit: Audit, dsn: str) -> None:
    """The per-transaction server CPU behind the README's breakdown: an audited table costs
    more than the same table unaudited, and the reference's own difference is zero."""
    from pgaudit_tool.bench.backend_cpu import backend_cpu

    for name in ("cpu_plain", "cpu_audited"):
        audit.conn.execute(TABLE_DDL.format(name))
        audit.conn.execute(
            f"INSERT INTO {name} (id, qty, label, amount, created_at, active, attrs, ref)"
            " SELECT i, 0, 'x', 0, now(), true, '{}', gen_random_uuid()"
            " FROM generate_series(1, 100) AS i"
        )
    audit.enable("cpu_audited")
    try:
        plain, audited = backend_cpu(dsn, ["cpu_plain", "cpu_audited"], 1000, 1, rows=100)
    except InvalidInput as exc:  # a server on another machine (a DSN given to the tests)
        pytest.skip(str(exc))
    assert (plain.table, plain.delta_us) == ("cpu_plain", 0)
    assert audited.table == "cpu_audited" and audited.delta_us > 0
    assert audit.conn.execute(
        "SELECT count(*) FROM audit.change WHERE table_name = 'cpu_audited'"
    ).fetchone() == (1000,)
    with pytest.raises(InvalidInput):
        backend_cpu(dsn, ["cpu_plain"])
