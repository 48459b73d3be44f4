"""Archive (issue 16): sealed partitions of the log to Parquet with a manifest, dropped in one
transaction, the chain still provable without the files and recomputed from them with verify
--archive; tampering with the files detected; holds block the drop; a killed archive changes
nothing and a re-run completes.

Partitions of a few seconds (made with audit._partition_add) let a test spread history over
several partitions without waiting for minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgaudit_tool import Audit, archive
from pgaudit_tool.archive import COLUMNS, duckdb_module
from tests.conftest import PgServer, fresh_database
from tests.test_cli import PGAUDIT_TOOL, failed, invoke, ok

Conn = psycopg.Connection[Any]
STEP = timedelta(seconds=2)


def short_partitions(conn: Conn, count: int = 4) -> list[datetime]:
    """Replace the log's (empty) partitions by ``count`` of 2 seconds from now on (the first
    one second longer: on a loaded machine, making the partitions can take a second, and what
    a test writes next must still land in the first); their starts."""
    for (name,) in conn.execute(
        "SELECT partition::text FROM audit.partitions() WHERE lower IS NOT NULL"
    ).fetchall():
        conn.execute(f"DROP TABLE {name}")
    start = conn.execute("SELECT date_trunc('second', clock_timestamp())").fetchone()[0]  # type: ignore[index]
    starts = [start] + [start + timedelta(seconds=1) + i * STEP for i in range(1, count)]
    for lower, upper in zip(starts, [*starts[1:], starts[-1] + STEP], strict=True):
        conn.execute("SELECT audit._partition_add(%s, %s)", (lower, upper))
    return starts


def audited_table(audit: Audit, conn: Conn) -> list[datetime]:
    """The schema installed, table t audited, partitions of 2 seconds; their starts."""
    audit.install(partition_interval="1 minute")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, amount numeric, at timestamptz)")
    conn.execute("SELECT audit.enable('t')")
    return short_partitions(conn)


def wait_until(moment: datetime) -> None:
    while (left := (moment - datetime.now(moment.tzinfo)).total_seconds()) > 0:
        time.sleep(min(left, 0.2) + 0.01)


def write_batch(conn: Conn, first: int) -> None:
    conn.execute(
        "INSERT INTO t SELECT g, 'v' || g, g * 1.5, now() FROM generate_series(%s::int, %s::int) AS g",
        (first, first + 19),
    )
    conn.execute("UPDATE t SET v = v || '!' WHERE id %% 3 = 0 AND id >= %s::int", (first,))
    conn.execute("DELETE FROM t WHERE id = %s::int", (first + 1,))


@pytest.fixture
def spread(dsn: str, conn: Conn) -> Iterator[tuple[Audit, list[datetime]]]:
    """History in two partitions of 2 seconds, sealed in one block that spans both."""
    with Audit.connect(dsn) as audit:
        starts = audited_table(audit, conn)
        write_batch(conn, 1)
        wait_until(starts[1] + timedelta(milliseconds=50))
        write_batch(conn, 100)
        audit.checkpoint()
        yield audit, starts


def counts(conn: Conn) -> tuple[int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM audit.change), (SELECT count(*) FROM audit.transaction)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def archive_cli(dsn: str, before: datetime, directory: Path, *args: str) -> Any:
    return invoke(dsn, "archive", "--before", before.isoformat(), "--to", str(directory), *args)


def test_archive_drop_keeps_the_chain_provable_with_and_without_the_files(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    audit, starts = spread
    before_changes = counts(conn)[0]
    first = conn.execute(
        "SELECT count(*) FROM audit.change WHERE started_at < %s", (starts[1],)
    ).fetchone()
    assert first is not None and 0 < first[0] < before_changes
    directory = tmp_path / "archive"
    out = json.loads(
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes", "--format", "json"))
    )
    assert [p["status"] for p in out] == ["dropped"]
    assert out[0]["changes"] == first[0]
    assert counts(conn)[0] == before_changes - first[0]
    assert conn.execute(
        "SELECT to_regclass(%s)", (f"audit.change_p{out[0]['suffix']}",)
    ).fetchone() == (None,)
    # The block spanning both partitions keeps the digests of its dropped rows: plain verify
    # still proves the rows left, in the client and in the database.
    kept = conn.execute("SELECT count(*) FROM audit.retired_row").fetchone()
    assert kept is not None and kept[0] > 0
    assert audit.verify() == []
    assert conn.execute("SELECT * FROM audit.verify()").fetchall() == []
    assert audit.verify(archive=directory) == []
    # The manifest lists both files, with their rows, sha256 and the blocks they cover.
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = manifest["partitions"][0]
    assert entry["changes"] == first[0] and entry["dropped"] is True
    assert {f["rows"] for f in entry["files"].values()} == {first[0], entry["transactions"]}
    assert entry["blocks"] and all(len(b["hash"]) == 64 for b in entry["blocks"])
    # States before the dropped commits cannot be rebuilt from the log: the error names the
    # archive; later ones still can.
    dropped_until = conn.execute("SELECT committed_max FROM audit.retired_partition").fetchone()
    assert dropped_until is not None
    early = (dropped_until[0] - timedelta(milliseconds=1)).isoformat()
    for command in (["row-at", "t", "--pk", "3", "--at", early], ["table-at", "t", "--at", early]):
        failed(invoke(dsn, *command), 2, "left the log", str(directory))
    assert audit.row_at("t", 3, dropped_until[0]) is not None
    # A later change is sealed and verified as usual.
    conn.execute("UPDATE t SET v = 'later' WHERE id = 100")
    audit.checkpoint()
    assert audit.verify() == [] and audit.verify(archive=directory) == []


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_what_left_the_log_is_said_wherever_the_live_log_alone_is_read(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """After a drop, readings of the live log alone that may miss dropped changes say so, and
    where they went: history and blame with a note on stderr (none when the window is after
    them, or with --archive), transaction and revert refuse with an error naming the archive
    (a revert would otherwise undo part of what it was asked), partitions --retired and
    Audit.retired list the pairs; retention without an archive is said as such."""
    audit, starts = spread
    dropped_txid = conn.execute(
        "SELECT min(txid)::text::bigint FROM audit.transaction WHERE started_at < %s", (starts[1],)
    ).fetchone()[0]  # type: ignore[index]
    directory = tmp_path / "archive"
    ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
    [pair] = audit.retired()
    assert (pair["reason"], pair["archive"], pair["tables"]) == (
        "archive",
        str(directory),
        ["public.t"],
    )
    assert pair["txid_min"] <= dropped_txid <= pair["txid_max"]
    assert audit.retired("t", txid=dropped_txid) == [pair]
    assert audit.retired("t", since=pair["committed_max"] + timedelta(microseconds=1)) == []
    listed = json.loads(ok(invoke(dsn, "partitions", "--retired", "--format", "json")))
    assert [p["archive"] for p in listed] == [str(directory)]
    note = f"add --archive {directory} to read them"
    for reading in (
        ["history", "t"],
        ["history", "--format", "jsonl"],
        ["blame", "t", "--pk", "3"],  # set by archived changes
    ):
        result = invoke(dsn, *reading)
        ok(result)
        assert "note: 1 partition pair(s)" in result.stderr and note in result.stderr, reading
        with_archive = invoke(dsn, *reading, "--archive", str(directory))
        assert ok(with_archive) and "note:" not in with_archive.stderr
    later = (pair["committed_max"] + timedelta(microseconds=1)).isoformat()
    assert "note:" not in invoke(dsn, "history", "t", "--since", later).stderr
    # A row whose every column was set by changes still in the log: nothing to say.
    assert "note:" not in invoke(dsn, "blame", "t", "--pk", "100").stderr
    failed(invoke(dsn, "transaction", str(dropped_txid)), 2, "is in the live log", note)
    assert ok(invoke(dsn, "transaction", str(dropped_txid), "--archive", str(directory)))
    before = conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
    failed(
        invoke(dsn, "revert", "--txid", str(dropped_txid), "--yes"),
        2,
        "left the log",
        str(directory),
    )
    failed(
        invoke(dsn, "revert", "--db-user", "postgres", "--since", starts[0].isoformat(), "--yes"),
        2,
        "may have left the log",
        "start the window (since) after",
    )
    assert conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone() == before
    # A window after the dropped commits is reverted as usual.
    conn.execute("SELECT set_config('pgaudit.actor', 'late', false)")
    conn.execute("UPDATE t SET v = 'late' WHERE id = 100")
    ok(invoke(dsn, "revert", "--actor", "late", "--since", later, "--yes"))
    assert conn.execute("SELECT v FROM t WHERE id = 100").fetchone() != ("late",)


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_a_report_says_when_its_window_reaches_into_history_that_left(
    spread: tuple[Audit, list[datetime]], dsn: str, tmp_path: Path
) -> None:
    """A report counts the live log only: when part of its window left the log, every form
    says so and names the archive; a window after what left has no such notice."""
    audit, starts = spread
    directory = tmp_path / "archive"
    ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
    since = starts[0].isoformat()
    left = json.loads(ok(invoke(dsn, "report", "--since", since, "--format", "json")))
    assert left["window"]["left_log"]["pairs"] == 1
    assert left["window"]["left_log"]["archives"] == [str(directory)]
    md = ok(invoke(dsn, "report", "--since", since, "--format", "md"))
    assert "history left the log" in md and "archived to /tmp/" in md, md[:600]
    page = tmp_path / "report.html"
    ok(invoke(dsn, "report", "--since", since, "--output", str(page)))
    assert 'id="left-log"' in page.read_text()
    later = (audit.retired()[0]["committed_max"] + timedelta(microseconds=1)).isoformat()
    after = json.loads(ok(invoke(dsn, "report", "--since", later, "--format", "json")))
    assert after["window"]["left_log"] is None
    assert "left the log" not in ok(invoke(dsn, "report", "--since", later, "--format", "md"))


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_history_says_what_retention_dropped_without_an_archive(
    spread: tuple[Audit, list[datetime]], dsn: str
) -> None:
    audit, starts = spread
    wait_until(starts[1] + timedelta(seconds=1.2))
    ok(invoke(dsn, "retention", "--keep", "1 second", "--no-archive", "--yes"))
    [pair] = audit.retired("t")
    assert (pair["reason"], pair["archive"]) == ("retention", None)
    result = invoke(dsn, "history", "t")
    ok(result)
    assert "dropped without an archive" in result.stderr and "--archive" not in result.stderr


@pytest.mark.one_major  # the detectors' baseline; the drop itself runs on every major
def test_a_subject_whose_changes_left_the_log_is_not_new_to_the_detectors(
    dsn: str, conn: Conn
) -> None:
    """The detectors judge against the history before the window (30 days by default): when
    that history was dropped (retention shorter than the baseline), a table's history starts
    where the dropped partitions end, so that an actor whose earlier changes left the log is
    not reported as changing the table for the first time (new_actor stays silent until the
    table has a baseline's worth of history again). Fails when the start is enable's."""
    with Audit.connect(dsn) as audit:
        starts = audited_table(audit, conn)
        # A table audited for two months.
        conn.execute(
            "UPDATE audit.tracked_table SET history_since = now() - interval '60 days',"
            " enabled_at = now() - interval '60 days'"
        )
        conn.execute("SELECT set_config('pgaudit.actor', 'alice', false)")
        write_batch(conn, 1)
        wait_until(starts[1] + timedelta(seconds=1.2))
        ok(invoke(dsn, "retention", "--keep", "1 second", "--no-archive", "--yes"))
        assert audit.retired("t")
        conn.execute("UPDATE t SET v = 'again' WHERE id = 5")
        audit.checkpoint()
        found = audit.anomalies(since=starts[1])
        assert not [f for f in found if f["rule"] == "new_actor"], found


def tampered(directory: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(directory, copy)
    return copy


def rewrite(path: Path, select: str) -> None:
    """Rewrite a Parquet file through DuckDB: ``select`` reads it as ``src``."""
    duckdb = duckdb_module()
    con = duckdb.connect()
    staging = path.with_suffix(".new")
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet('{path}')")
    con.execute(f"COPY ({select}) TO '{staging}' (FORMAT parquet)")
    con.close()
    staging.replace(path)


def test_verify_archive_detects_every_kind_of_tampering(
    spread: tuple[Audit, list[datetime]],
    dsn: str,
    conn: Conn,
    tmp_path: Path,
    pg_server: PgServer,
) -> None:
    audit, starts = spread
    directory = tmp_path / "archive"
    ok(archive_cli(dsn, starts[2], directory, "--drop", "--yes"))
    assert audit.verify(archive=directory) == []
    change = sorted(directory.glob("change_p*.parquet"))[0]
    columns = [c for c, _ in COLUMNS["change"]]
    edited = ", ".join("replace(new, 'v1', 'v9') AS new" if c == "new" else c for c in columns)
    cases = {
        "edited": f"SELECT {edited} FROM src",
        "deleted": "SELECT * FROM src WHERE id <> (SELECT min(id) FROM src)",
        "reordered": "SELECT * FROM src ORDER BY id DESC",
    }
    for case, select in cases.items():
        copy = tampered(directory, tmp_path, case)
        rewrite(copy / change.name, select)
        problems = audit.verify(archive=copy)
        assert any("not the file archived" in p["problem"] for p in problems), (case, problems)
    missing = tampered(directory, tmp_path, "missing")
    (missing / change.name).unlink()
    problems = audit.verify(archive=missing)
    assert any("is missing" in p["problem"] for p in problems), problems
    result = invoke(dsn, "verify", "--archive", str(missing), "--format", "json")
    assert result.exit_code == 7 and "NOT intact" in result.stderr
    assert any("is missing" in p["problem"] for p in json.loads(result.stdout))
    # Another database's archive of a partition with the same name, put in its place.
    with (
        fresh_database(pg_server, f"{conn.info.dbname}_other") as other_dsn,
        Audit.connect(other_dsn) as other,
        psycopg.connect(other_dsn, autocommit=True) as oc,
    ):
        other.install(partition_interval="1 minute")
        oc.execute("CREATE TABLE t (id int PRIMARY KEY, v text, amount numeric, at timestamptz)")
        oc.execute("SELECT audit.enable('t')")
        for (name,) in oc.execute(
            "SELECT partition::text FROM audit.partitions() WHERE lower IS NOT NULL"
        ).fetchall():
            oc.execute(f"DROP TABLE {name}")
        oc.execute("SELECT audit._partition_add(%s, %s)", (starts[0], starts[1]))
        foreign = tmp_path / "foreign"
        ok(invoke(other_dsn, "archive", "--before", starts[1].isoformat(), "--to", str(foreign)))
    swapped = tampered(directory, tmp_path, "swapped")
    shutil.copy(foreign / change.name, swapped / change.name)
    problems = audit.verify(archive=swapped)
    assert any("not the file archived" in p["problem"] for p in problems), problems


def test_a_hold_blocks_the_drop_until_released(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    audit, starts = spread
    directory = tmp_path / "archive"
    placed = json.loads(
        ok(invoke(dsn, "hold", "--table", "t", "--reason", "case 7", "--format", "json"))
    )
    assert placed[0]["table_name"] == "public.t" and placed[0]["reason"] == "case 7"
    before = counts(conn)
    err = failed(
        archive_cli(dsn, starts[1], directory, "--drop", "--yes"), 2, "legal hold", "case 7"
    )
    assert "a re-run uses them" in err
    assert counts(conn) == before
    assert conn.execute("SELECT count(*) FROM audit.retired_partition").fetchone() == (0,)
    # Archiving without dropping is allowed under a hold.
    ok(archive_cli(dsn, starts[1], directory))
    assert counts(conn) == before
    ok(invoke(dsn, "hold", "--release", str(placed[0]["id"])))
    assert audit.holds() == []
    out = json.loads(
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes", "--format", "json"))
    )
    assert [p["status"] for p in out] == ["dropped"]
    # A hold on the whole log, then on an unrelated table: only the first blocks.
    conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    audit.hold(None, reason="everything")
    failed(archive_cli(dsn, starts[2], directory, "--drop", "--yes"), 2, "whole log")
    audit.release_holds(everything=True)
    audit.hold("other")
    ok(archive_cli(dsn, starts[2], directory, "--drop", "--yes"))
    assert audit.verify(archive=directory) == []


def test_a_killed_archive_changes_nothing_and_a_rerun_completes(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    audit, starts = spread
    directory = tmp_path / "archive"
    before = counts(conn)
    # A reader holds the log: the archive writes its files, then waits to drop.
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT 1 FROM audit.change LIMIT 1")
        proc = subprocess.Popen(
            [
                PGAUDIT_TOOL,
                "--dsn",
                dsn,
                "--lock-timeout",
                "0",
                "archive",
                "--before",
                starts[1].isoformat(),
                "--to",
                str(directory),
                "--drop",
                "--yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _waiting_for_lock(conn):
            time.sleep(0.1)
        assert _waiting_for_lock(conn), "the archive never reached the drop"
        assert (directory / "manifest.json").exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert counts(conn) == before
    assert conn.execute("SELECT count(*) FROM audit.retired_partition").fetchone() == (0,)
    assert audit.verify() == []
    out = json.loads(
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes", "--format", "json"))
    )
    assert [p["status"] for p in out] == ["dropped"]
    assert audit.verify(archive=directory) == []


def _waiting_for_lock(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%%audit.retire%%')"
    ).fetchone()
    return bool(row and row[0])


def test_unsealed_partitions_are_left_out_and_the_drop_needs_confirmation(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    with Audit.connect(dsn) as audit:
        starts = audited_table(audit, conn)
        write_batch(conn, 1)
        later = starts[-1] + STEP
        directory = tmp_path / "archive"
        result = archive_cli(dsn, later, directory, "--drop", "--yes", "--format", "json")
        assert ok(result) == "[]\n" or json.loads(ok(result)) == []
        assert "not sealed" in result.stderr and "pgaudit-tool maintain" in result.stderr
        before = counts(conn)
        audit.checkpoint()
        dry = archive_cli(dsn, later, directory, "--drop", "--dry-run")
        assert "SELECT * FROM audit.retire(" in ok(dry) + dry.stderr
        assert counts(conn) == before and not directory.exists()
        failed(archive_cli(dsn, later, directory, "--drop"), 2, "confirmation")
        assert counts(conn) == before
        ok(archive_cli(dsn, later, directory, "--drop", "--yes"))
        assert counts(conn) == (0, 0)
        assert audit.verify(archive=directory) == [] and audit.verify() == []


def test_the_archive_is_plain_parquet_other_engines_read(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """The README's DuckDB query over the archive gives what the log gave before."""
    starts = spread[1]
    expected = conn.execute(
        "SELECT c.id, c.op::text, c.new ->> 'v', t.db_user FROM audit.change AS c"
        " JOIN audit.transaction AS t ON t.txid = c.txid AND t.started_at = c.started_at"
        " WHERE c.table_name = 't' AND t.db_user = current_user ORDER BY c.id"
    ).fetchall()
    directory = tmp_path / "archive"
    ok(archive_cli(dsn, starts[2], directory, "--drop", "--yes"))
    duckdb = duckdb_module()
    con = duckdb.connect()
    got = con.execute(
        "SELECT c.id, c.op, json_extract_string(c.new, '$.v'), t.db_user"
        " FROM read_parquet(? || '/change_p*.parquet') AS c"
        " JOIN read_parquet(? || '/transaction_p*.parquet') AS t USING (txid)"
        " WHERE c.table_name = 't' AND t.db_user = ? ORDER BY c.id",
        [str(directory), str(directory), "postgres"],
    ).fetchall()
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    schema = dict(
        con.execute(
            "SELECT name, type FROM parquet_schema(?) WHERE name <> 'duckdb_schema'",
            [str(sorted(directory.glob("change_p*.parquet"))[0])],
        ).fetchall()
    )
    assert list(schema) == [c for c, _ in COLUMNS["change"]]


def test_retention_without_archive_must_be_said_and_is_recorded_and_sealed(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn
) -> None:
    audit, starts = spread
    failed(invoke(dsn, "retention", "--keep", "1 second", "--yes"), 2, "--no-archive")
    failed(invoke(dsn, "retention", "--keep", "-1 day", "--no-archive", "--yes"), 2, "positive")
    failed(invoke(dsn, "retention", "--keep", "soon", "--no-archive", "--yes"), 2)
    wait_until(starts[1] + timedelta(seconds=1.2))
    before = counts(conn)
    dry = invoke(dsn, "retention", "--keep", "1 second", "--no-archive", "--dry-run")
    assert "audit.retire(" in ok(dry) + dry.stderr and counts(conn) == before
    failed(invoke(dsn, "retention", "--keep", "1 second", "--no-archive"), 2, "confirmation")
    out = json.loads(
        ok(
            invoke(
                dsn, "retention", "--keep", "1 second", "--no-archive", "--yes", "--format", "json"
            )
        )
    )
    assert [p["status"] for p in out] == ["dropped"] and counts(conn)[0] < before[0]
    record = conn.execute("SELECT reason, files, changes FROM audit.retired_partition").fetchall()
    assert record == [("retention", None, out[0]["changes"])]
    # The record of the drop is sealed at once; the rest is still proven.
    report = audit.verify_report()
    assert report.problems == [] and report.unsealed["journal"] == 0
    assert any("dropped by retention" in n for n in report.notes)
    assert conn.execute("SELECT * FROM audit.verify()").fetchall() == []


def test_retention_archives_first_and_stops_at_a_hold(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    audit, starts = spread
    wait_until(starts[2] + timedelta(seconds=1.2))
    audit.hold("t", reason="inquiry")
    directory = tmp_path / "archive"
    result = invoke(dsn, "retention", "--keep", "1 second", "--archive-to", str(directory), "--yes")
    assert ok(result) == "" or "suffix" in result.stdout
    assert "inquiry" in result.stderr
    assert conn.execute("SELECT count(*) FROM audit.retired_partition").fetchone() == (0,)
    audit.release_holds(table="t")
    out = json.loads(
        ok(
            invoke(
                dsn,
                "retention",
                "--keep",
                "1 second",
                "--archive-to",
                str(directory),
                "--yes",
                "--format",
                "json",
            )
        )
    )
    assert [p["status"] for p in out] == ["dropped", "dropped"]
    assert audit.verify() == [] and audit.verify(archive=directory) == []


def test_history_with_the_archive_is_as_if_it_never_left(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    audit, starts = spread
    conn.execute("SELECT set_config('pgaudit.actor', 'alice', false)")
    conn.execute("UPDATE t SET v = 'by alice' WHERE id IN (3, 104)")
    audit.checkpoint()
    first_txid = conn.execute("SELECT min(txid)::text FROM audit.transaction").fetchone()[0]  # type: ignore[index]
    # Right after the first transaction (in the partition that will leave the log).
    early = conn.execute("SELECT min(committed_at) FROM audit.transaction").fetchone()[0]  # type: ignore[index]
    at = early.isoformat()
    queries = [
        ["history", "--format", "json"],
        ["history", "t", "--pk", "3", "--format", "jsonl"],
        ["history", "t", "--actor", "alice", "--format", "csv"],
        ["history", "--db-user", "postgres", "--last", "7", "--format", "json"],
        ["history", "t", "--format", "table", "--wide"],
        ["transaction", first_txid, "--format", "json"],
        ["row-at", "t", "--pk", "3", "--at", at],
        ["row-at", "t", "--pk", "2", "--at", at],
        ["table-at", "t", "--at", at, "--format", "jsonl"],
        ["table-at", "t", "--at", at, "--format", "table"],
        ["diff", "t", "--from", at, "--format", "json"],
        ["blame", "t", "--pk", "3", "--format", "json"],
        ["blame", "t", "--pk", "104", "--format", "json"],
    ]
    before = [ok(invoke(dsn, *q)) for q in queries]
    directory = tmp_path / "an archive, 'quoted' \"twice\" ü"  # paths reach DuckDB as literals
    ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
    assert ok(invoke(dsn, *queries[0])) != before[0]  # without the archive, some are gone
    failed(invoke(dsn, *queries[6]), 2, "left the log")  # row-at: refused, naming the archive
    for query, expected in zip(queries, before, strict=True):
        assert ok(invoke(dsn, *query, "--archive", str(directory))) == expected, query
    assert audit.verify(archive=directory) == []
    listed = list(audit.history("t", pk=3, archive=directory))
    assert [c["op"] for c in listed] == ["INSERT", "UPDATE", "UPDATE"]
    # Another database's archive directory is refused.
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["database"]["database_oid"] = 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    failed(invoke(dsn, "history", "--archive", str(directory)), 2, "another database")


def test_a_damaged_archive_file_is_a_clear_error(
    spread: tuple[Audit, list[datetime]], dsn: str, conn: Conn, tmp_path: Path
) -> None:
    starts = spread[1]
    directory = tmp_path / "archive"
    ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
    change = sorted(directory.glob("change_p*.parquet"))[0]
    change.write_bytes(b"not parquet at all")
    failed(invoke(dsn, "history", "--archive", str(directory)), 2, "cannot read the archive file")
    result = invoke(dsn, "verify", "--archive", str(directory))
    assert result.exit_code == 7 and "Traceback" not in result.stderr


def test_hostile_names_survive_the_archive(dsn: str, conn: Conn, tmp_path: Path) -> None:
    """A table owner's names (quotes, commas, a line break, non-ASCII) and values go through
    the CSV and Parquet of the archive and back unchanged."""
    name = 'public."we\'ird ""t"", x\nü"'
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 minute")
        conn.execute(f'CREATE TABLE {name} ("k,ey" int PRIMARY KEY, "v""" text)')
        audit.enable(name)
        starts = short_partitions(conn)
        conn.execute(f"INSERT INTO {name} VALUES (1, E'a,\"b\"\\n\\\\.\\n'), (2, '')")
        conn.execute(f'UPDATE {name} SET "v""" = NULL WHERE "k,ey" = 2')
        audit.checkpoint()
        before = ok(invoke(dsn, "history", name, "--format", "jsonl"))
        wait_until(starts[1])
        directory = tmp_path / "archive"
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
        assert (
            ok(invoke(dsn, "history", name, "--format", "jsonl", "--archive", str(directory)))
            == before
        )
        assert audit.verify(archive=directory) == [] and audit.verify() == []


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ('{"id": 1.50}', '{"id": 1.5}'),
        ('{"id": 3.0}', '{"id": 3}'),
        ('{"id": -10.000}', '{"id": -10}'),
        ('{"id": 100}', '{"id": 100}'),
        ('{"id": 1.05}', '{"id": 1.05}'),
        ('{"id": 1.5001}', '{"id": 1.5001}'),
        ('{"a": [1.0, 2.10, 30], "b": {"x": 0.0}}', '{"a": [1, 2.1, 30], "b": {"x": 0}}'),
        # Strings are left as they are, with their escaped quotes and backslashes.
        ('{"k 1.50": "1.50", "v": 2.50}', '{"k 1.50": "1.50", "v": 2.5}'),
        ('{"k": "a\\" 1.0 \\\\", "n": 1.0}', '{"k": "a\\" 1.0 \\\\", "n": 1}'),
    ],
)
def test_numbers_of_a_key_are_spelled_one_way(spelled: str, canonical: str) -> None:
    """The form in which the archive compares numeric keys (``archive.canonical_numbers``),
    and DuckDB's regular expression agrees with Python's."""
    assert archive.canonical_numbers(spelled) == canonical
    key = archive.KeyTexts([spelled], numeric=True)
    condition, params = key.condition("pk")
    with archive.duckdb_session() as con:
        found = con.execute(
            f"SELECT count(*) FROM (SELECT ? AS pk UNION ALL SELECT ?) WHERE {condition}",
            [canonical, spelled, *params],
        ).fetchone()
    assert found == (2,)


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_a_key_is_found_in_the_archive_however_its_numbers_are_spelled(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """jsonb compares numbers by value (1.5 = 1.50, 3 = 3.0): the live log finds a numeric
    key however it is spelled, and so must the archive, which holds keys as text. Numeric key
    columns, numeric in a domain, an array and a composite type, and text keys holding digits
    (compared as they are): history (all formats), row-at and blame give with --archive what
    they gave before the drop. Fails when the archive compares the texts of numeric keys."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 minute")
        conn.execute("CREATE DOMAIN money2 AS numeric CHECK (VALUE > -1000)")
        conn.execute("CREATE TYPE pair AS (x numeric, y text)")
        conn.execute("CREATE TABLE n (id numeric PRIMARY KEY, v text)")
        conn.execute(
            "CREATE TABLE m (a money2, b numeric[], c pair, d text, v text,"
            " PRIMARY KEY (a, b, c, d))"
        )
        conn.execute("CREATE TABLE s (k text PRIMARY KEY, v text)")
        for table in ("n", "m", "s"):
            audit.enable(table)
        starts = short_partitions(conn)
        conn.execute("INSERT INTO n VALUES (1.50, 'a'), (3.0, 'b'), (7, 'c'), (70, 'd')")
        conn.execute("INSERT INTO m VALUES (2.10, '{1.0,2}', ROW(5.00, 'x 1.50'), '1.50', 'a')")
        conn.execute("INSERT INTO s VALUES ('1.50', 'a'), ('1.5', 'b')")
        for table in ("n", "m", "s"):
            conn.execute(f"UPDATE {table} SET v = v || '!'")
        wait_until(starts[1] + timedelta(milliseconds=50))
        for table in ("n", "m", "s"):
            conn.execute(f"UPDATE {table} SET v = v || '?'")
        audit.checkpoint()
        at = (starts[1] - timedelta(milliseconds=200)).isoformat()
        keys = [
            ("n", "1.5"),
            ("n", "1.500"),
            ("n", "3"),
            ("n", "7.0"),
            ("n", "70"),
            ("m", '{"a": 2.1, "b": [1, 2.00], "c": {"x": 5, "y": "x 1.50"}, "d": "1.50"}'),
            ("s", "1.50"),
            ("s", "1.5"),
        ]
        queries = [
            q
            for table, pk in keys
            for q in (
                ["history", table, "--pk", pk, "--format", "jsonl"],
                ["history", table, "--pk", pk, "--format", "json"],
                ["history", table, "--pk", pk, "--format", "csv"],
                ["row-at", table, "--pk", pk, "--at", at],
                ["blame", table, "--pk", pk, "--format", "json"],
            )
        ]
        before = [ok(invoke(dsn, *q)) for q in queries]
        for query, output in zip(queries, before, strict=True):
            if query[0] == "history" and query[-1] == "jsonl":
                assert output.count("\n") == 3, (query, output)  # the live log finds them all
        live = [list(audit.history(table, pk=pk)) for table, pk in keys]
        directory = tmp_path / "archive"
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
        for query, expected in zip(queries, before, strict=True):
            assert ok(invoke(dsn, *query, "--archive", str(directory))) == expected, query
        assert [list(audit.history(t, pk=pk, archive=directory)) for t, pk in keys] == live


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_row_at_and_blame_read_only_their_rows_from_the_archive(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """row-at and blame with --archive load the archived changes of their row (of the rows
    having a part of the key), found under the key's past column names too (a key column
    renamed after the changes were archived), not every archived change of the table; and
    answer as before the drop."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 minute")
        conn.execute("CREATE TABLE k (a int, b text, v text, PRIMARY KEY (a, b))")
        audit.enable("k")
        starts = short_partitions(conn)
        conn.execute("INSERT INTO k SELECT g % 10, 'r' || g, 'v' FROM generate_series(1, 200) AS g")
        between = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE k SET v = v || '!' WHERE a = 3")
        wait_until(starts[1] + timedelta(milliseconds=50))
        conn.execute("UPDATE k SET v = v || '?' WHERE b = 'r13'")
        audit.checkpoint()
        at = between.isoformat()  # after the INSERT, before the UPDATE: both archived
        row = {"a": 3, "b": "r13"}
        before = (audit.row_at("k", row, at), audit.blame("k", row), audit.blame("k", 3))
        directory = tmp_path / "archive"
        ok(archive_cli(dsn, starts[1], directory, "--drop", "--yes"))
        conn.execute("ALTER TABLE k RENAME COLUMN b TO bb")
        renamed = {"a": 3, "bb": "r13"}

        def loaded() -> int:
            found = audit.conn.execute("SELECT count(*) FROM pg_temp.pgaudit_archived_change")
            return int(found.fetchone()[0])  # type: ignore[index]

        assert audit.row_at("k", renamed, at, archive=directory) == {
            **{k: v for k, v in before[0].items() if k != "b"},  # type: ignore[union-attr]
            "bb": "r13",
        }
        assert before[0] == {"a": 3, "b": "r13", "v": "v"}
        assert loaded() == 1  # the row's UPDATE committed after the instant, of 220 archived
        blamed = audit.blame("k", renamed, archive=directory)
        assert [(b["column_name"], b["change_id"]) for b in blamed] == [
            ("bb" if b["column_name"] == "b" else b["column_name"], b["change_id"])
            for b in before[1]
        ]
        assert loaded() == 2
        assert len(audit.blame("k", 3, archive=directory)) == len(before[2])
        assert loaded() == 40  # the 20 rows with a = 3: INSERT and UPDATE each


@pytest.mark.one_major  # the archive's reading logic; the archive itself runs on every major
def test_a_truncate_without_rows_in_the_archive_still_stops_reconstruction(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """A TRUNCATE recorded without its rows (no key) after an instant makes row-at refuse
    that instant; reading the archive by key must still find it when it was archived."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 minute")
        conn.execute("CREATE TABLE z (id int PRIMARY KEY, v text)")
        audit.enable("z", capture_truncate=False)
        starts = short_partitions(conn)
        conn.execute("INSERT INTO z VALUES (1, 'a'), (2, 'b')")
        between = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("TRUNCATE z")
        conn.execute("INSERT INTO z VALUES (1, 'again')")
        wait_until(starts[1] + timedelta(milliseconds=50))
        conn.execute("UPDATE z SET v = 'later' WHERE id = 1")
        audit.checkpoint()
        at = between.isoformat()
        refused = failed(invoke(dsn, "row-at", "z", "--pk", "1", "--at", at), 2, "TRUNCATE")
        ok(archive_cli(dsn, starts[1], tmp_path / "archive", "--drop", "--yes"))
        again = invoke(
            dsn, "row-at", "z", "--pk", "1", "--at", at, "--archive", str(tmp_path / "archive")
        )
        assert failed(again, 2, "TRUNCATE") == refused


def test_changes_rendered_by_several_sessions_make_the_same_file(
    dsn: str,
    conn: Conn,
    pg_server: PgServer,
    make_role: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large partition of changes is rendered as CSV by several sessions at once
    (archive.render_streams), each reading the snapshot of the archiving transaction, as its
    role: the file holds exactly the rows one session writes, none committed after the
    snapshot, and no operator of a schema on their default search_path runs; when no other
    session may be opened (a connection limit), the archiving one renders them all."""
    with Audit.connect(dsn) as audit:
        audit.install()
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, amount numeric, at timestamptz)")
    conn.execute("SELECT audit.enable('t')")
    conn.execute(
        "INSERT INTO t SELECT g, 'v' || g || E'\\n,\"' || repeat('x', g % 7), g * 1.5, now()"
        " FROM generate_series(1, 400) AS g"
    )
    conn.execute("UPDATE t SET v = NULL WHERE id % 3 = 0")
    conn.execute("DELETE FROM t WHERE id % 5 = 0")
    reader = make_role("arch", "NOINHERIT")
    conn.execute(sql.SQL("GRANT pgaudit_reader TO {}").format(sql.Identifier(reader)))
    # Operators first on the new sessions' default path, exact matches for bigint and integer.
    conn.execute(
        "CREATE SCHEMA evil; GRANT USAGE ON SCHEMA evil TO PUBLIC;"
        "CREATE FUNCTION evil.f(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS"
        " $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;"
        "CREATE FUNCTION evil.g(bigint, integer) RETURNS boolean LANGUAGE plpgsql AS"
        " $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;"
        "CREATE OPERATOR evil.% (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.f);"
        "CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.g)"
    )
    conn.execute(
        sql.SQL("ALTER ROLE {} SET search_path = evil, pg_catalog").format(sql.Identifier(reader))
    )
    assert archive.render_streams("change", archive.PARALLEL_ROWS) > 1
    assert archive.render_streams("transaction", archive.PARALLEL_ROWS) == 1
    query = sql.SQL("SELECT {} FROM audit.change").format(
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in COLUMNS["change"])
    )
    sessions: list[int] = []
    real = archive._share_sessions

    def share_sessions(c: Conn, n: int) -> list[Conn]:
        helpers = real(c, n)
        sessions.append(len(helpers))
        # Committed after the snapshot: in no share (but in what is rendered later).
        conn.execute("INSERT INTO t VALUES (1000 + %s, 'late')", (len(sessions),))
        return helpers

    monkeypatch.setattr(archive, "_share_sessions", share_sessions)
    duckdb = duckdb_module()
    with psycopg.connect(pg_server.dsn_for(conn.info.dbname, user=reader)) as rc:
        rc.execute("SET ROLE pgaudit_reader")
        one = archive.write_parquet(rc, query, "change", tmp_path / "one.parquet", streams=1)
        assert one == 400 + 133 + 80
        assert (
            archive.write_parquet(rc, query, "change", tmp_path / "three.parquet", streams=3) == one
        )
        conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(sql.Identifier(reader)))
        assert (
            archive.write_parquet(rc, query, "change", tmp_path / "alone.parquet", streams=2)
            == one + 2
        )
    assert sessions == [3, 0]
    one_file, three, alone = (
        duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / name}')").fetchall()
        for name in ("one.parquet", "three.parquet", "alone.parquet")
    )
    assert three == one_file
    extra = [row for row in alone if row not in one_file]
    assert [json.loads(row[11]) for row in extra] == [
        {"id": 1000 + n, "v": "late", "amount": None, "at": None} for n in (1, 2)
    ]


def test_every_character_of_every_text_column_survives_the_files(
    conn: Conn, tmp_path: Path
) -> None:
    """The files are written from PostgreSQL's COPY text format (backslash escapes, NULL as
    \\N) and decoded by DuckDB: every character from 1 to 255 and beyond, backslashes next to
    escape letters, a value spelled \\N, empty strings and NULLs come back as they were, in
    every text column of both files."""
    nasty = [
        "".join(chr(c) for c in range(1, 256)),
        "\\",
        "\\\\",
        "\\N",
        "\\\\N",
        "a\\nb\\\\tc\\\\\\r",
        "\t\n\r\b\f\v",
        "\\\t\\\n",
        "",
        None,
        "plain",
        "quote \" and ' and , and ; and 日本 and \U0001f600",
    ]
    duckdb = duckdb_module()
    for log in ("transaction", "change"):
        texts = [c for c, t in COLUMNS[log] if t == "VARCHAR"]
        selects = []
        for i, value in enumerate(nasty):
            cells = [
                sql.Literal(value) if t == "VARCHAR" else sql.SQL("NULL::{}").format(sql.SQL(pg))
                for (c, t), pg in zip(COLUMNS[log], _pg_types(log), strict=True)
            ]
            cells[0] = sql.Literal(i)
            selects.append(sql.SQL("SELECT {}").format(sql.SQL(", ").join(cells)))
        query = sql.SQL(" UNION ALL ").join(selects)
        path = tmp_path / f"{log}.parquet"
        assert archive.write_parquet(conn, query, log, path) == len(nasty)
        got = duckdb.sql(
            f"SELECT {', '.join(texts)} FROM read_parquet('{path}') ORDER BY {COLUMNS[log][0][0]}"
        ).fetchall()
        assert got == [tuple(value for _ in texts) for value in nasty]


def _pg_types(log: str) -> list[str]:
    return [
        {"BIGINT": "bigint", "INTEGER": "integer", "VARCHAR": "text", "TIMESTAMPTZ": "timestamptz"}[
            t
        ]
        for _, t in COLUMNS[log]
    ]
