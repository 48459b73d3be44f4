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
from pgaudit_tool.bench.config import WATCH_KEYS
from pgaudit_tool.bench.stats import percentile
from pgaudit_tool.errors import InvalidInput, NotInstalled


def tiny(**options: Any) -> BenchConfig:
    """The smallest bench that measures everything."""
    return BenchConfig(
        rows=200,
        clients=2,
        duration=1.0,
        repetitions=1,
        history_rows=2000,
        watch_changes=2000,
        **options,
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
            "   WHERE n.nspname = 'audit' AND p.proname LIKE 'capture\\_%')"
        ).fetchone()
    assert row is not None
    keys = ("schemas", "changes", "transactions", "tracked", "bench_tracked", "capture_functions")
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
    ):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert isinstance(result["table_at_live_ms"], float) and result["table_at_live_ms"] > 0
    assert result["row_at_p99_ms"] >= result["row_at_median_ms"]
    assert result["row_at_audit_rows"] >= config.history_rows
    assert result["row_at_samples"] == min(200, config.rows)
    # the middle of the history: past the first churn transaction (deletes and inserts)
    assert result["table_at_rows"] > 0 and result["table_at_rows"] != config.rows
    assert result["history_transactions"] > 4
    assert result["history_rows"] == config.history_rows


def _check_result(result: dict[str, Any], config: BenchConfig) -> None:
    assert set(result) == set(RESULT_KEYS)
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


def test_bench_reports_every_key_and_cleans_up(
    audit: Audit, dsn: str, history_before: dict[str, Any]
) -> None:
    messages: list[str] = []
    config = tiny()
    result = run_bench(dsn, config, messages.append)
    _check_result(result, config)
    if result["pgbench"] is None:  # no pgbench on this machine
        assert result["single_row_driver"] == "builtin"
        assert result["tpcb_tps_ratio"] is None and result["tpcb_floor_tps_ratio"] is None
    else:
        assert result["single_row_driver"] == "pgbench"
        for key in ("tpcb_tps_ratio", "tpcb_floor_tps_ratio", "tpcb_floor_tps"):
            assert isinstance(result[key], float) and result[key] > 0, key
        assert any("pgbench_history" in note for note in result["notes"])
    assert any("bulk statements" in m for m in messages)
    assert any(m.startswith("row-at") for m in messages)
    assert any(m.startswith("table-at") for m in messages)
    assert _leftovers(dsn) == history_before
    assert history_before["changes"] == 4 and history_before["tracked"] == ["orders"]


def test_bench_own_driver_without_pgbench(audit: Audit, dsn: str) -> None:
    config = tiny(use_pgbench=False, reconstruction=False)
    result = run_bench(dsn, config)
    _check_result(result, config)
    assert result["single_row_driver"] == "builtin"
    assert result["pgbench"] is None
    assert result["tpcb_tps_ratio"] is None
    assert result["tpcb_plain_tps"] is None
    assert result["tpcb_floor_tps_ratio"] is None and result["tpcb_floor_tps"] is None
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
    }


def test_bench_needs_the_audit_schema(dsn: str) -> None:
    with pytest.raises(NotInstalled):
        run_bench(dsn, tiny())


def test_bench_rejects_bad_config() -> None:
    with pytest.raises(InvalidInput, match="rows, repetitions"):
        run_bench("", BenchConfig(rows=0, repetitions=0))
    with pytest.raises(InvalidInput, match="history_rows"):
        run_bench("", BenchConfig(history_rows=0))


# --------------------------------------------------------------------------- no database


def test_render_table_rows() -> None:
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    result.update(
        insert_ratio=1.2,
        update_ratio=2.5,
        delete_ratio=9.0,
        delete_floor_ratio=8.4,
        single_row_update_tps_ratio=0.9,
        settings={"fsync": "on"},
        notes=["a note"],
    )
    rows = {row["metric"]: row for row in render_table(result)}
    assert {"metric", "value", "target", "status"} == set(rows["insert_ratio"])
    assert rows["insert_ratio"]["status"] == "ok"
    assert rows["update_ratio"]["status"] == "missed"
    # A target below what a bare JSONB log alone costs is said to be out of reach.
    assert rows["delete_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 8.4x)"
    )
    assert rows["delete_floor_ratio"]["value"] == 8.4
    assert rows["single_row_update_tps_ratio"] == {
        "metric": "single_row_update_tps_ratio",
        "value": 0.9,
        "target": ">= 0.8",
        "status": "ok",
    }
    assert rows["tpcb_tps_ratio"]["status"] == "not measured"
    assert rows["tpcb_floor_tps_ratio"]["value"] is None
    assert rows["setting fsync"]["value"] == "on"
    assert rows["note"]["value"] == "a note"
    assert set(TARGETS) <= set(rows)


def test_render_table_throughput_floors() -> None:
    """A TPS target above what a bare JSONB log alone keeps is out of reach; one below it is
    only missed; a floor that was not measured changes nothing."""
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    result.update(
        single_row_update_tps_ratio=0.55,
        single_row_update_floor_tps_ratio=0.7,
        tpcb_tps_ratio=0.8,
        tpcb_floor_tps_ratio=0.9,
        update_ratio=2.5,
        update_floor_ratio=1.9,
    )
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["single_row_update_tps_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 0.7 of the unaudited TPS)"
    )
    assert rows["tpcb_tps_ratio"]["status"] == "missed"
    assert rows["update_ratio"]["status"] == "missed"
    assert rows["single_row_update_floor_tps_ratio"]["value"] == 0.7
    assert rows["tpcb_floor_tps_ratio"]["value"] == 0.9
    result.update(tpcb_tps_ratio=0.6, tpcb_floor_tps_ratio=0.84, update_floor_ratio=2.1)
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["tpcb_tps_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 0.84 of the unaudited TPS)"
    )
    assert rows["update_ratio"]["status"] == (
        "missed (out of reach: a bare JSONB log alone is 2.1x)"
    )
    result.update(single_row_update_tps_ratio=0.85, single_row_update_floor_tps_ratio=None)
    result.update(tpcb_tps_ratio=0.6, tpcb_floor_tps_ratio=None)
    rows = {row["metric"]: row for row in render_table(result)}
    assert rows["single_row_update_tps_ratio"]["status"] == "ok"
    assert rows["tpcb_tps_ratio"]["status"] == "missed"


def test_every_ratio_target_has_a_floor() -> None:
    assert set(FLOOR_KEYS) == set(TARGETS) - set(WATCH_KEYS)
    assert set(FLOOR_KEYS.values()) <= set(RESULT_KEYS)


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
            "--no-pgbench",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(RESULT_KEYS) <= set(data)
    assert data["insert_ratio"] > 0 and data["tpcb_tps_ratio"] is None
    assert data["row_at_median_ms"] > 0 and data["table_at_ratio"] > 0
    assert data["scale"] == 2
    assert result.stderr.strip(), "progress goes to stderr"
