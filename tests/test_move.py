"""History survives a move (issue 15): pg_dump and pg_restore into another database or cluster.

Real ``pg_dump -Fc`` and ``pg_restore`` of the binaries of the server's own install (skipped on
a ``PGAUDIT_TEST_DSN`` server, whose install is unknown). After the restore every table has a
new OID (and an old OID may be another table's): doctor reports the move, ``reattach`` (also
``doctor --fix``) files everything under the new OIDs, after which history, row-at, table-at,
revert, new captures and ``verify`` (in the database and in the client) work across the move,
and a tampered row from before it is still caught. A restore into another cluster is refused
until ``pg_resetwal -e`` gives it a higher xid epoch than the log's transaction ids.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from click.testing import CliRunner, Result

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.cluster import PgInstall, TempCluster, available_installs
from pgaudit_tool.errors import AuditError
from tests.conftest import PgServer, fresh_database

Conn = psycopg.Connection[Any]
MIXED = 'public."Mixed Case"'


def cli(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--dsn", dsn, *args])


def _install(server: PgServer) -> PgInstall:
    if server.install is None:
        pytest.skip("the server of PGAUDIT_TEST_DSN has no known install for pg_dump/pg_restore")
    return server.install


def _client(bindir: Path, name: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        [str(bindir / name), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, f"{name} failed: {done.stderr}"


def dump_restore(install: PgInstall, source: str, target: str, path: Path) -> None:
    """pg_dump -Fc of the whole source database, pg_restore into the (empty) target."""
    _client(install.bindir, "pg_dump", "-Fc", "-f", str(path), "-d", source)
    _client(install.bindir, "pg_restore", "--exit-on-error", "-d", target, str(path))


def now(conn: Conn) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def oid(conn: Conn, name: str) -> int:
    row = conn.execute("SELECT %s::regclass::oid", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def build_history(audit: Audit, pad: int = 0) -> dict[str, Any]:
    """Audited tables (an enum column, a mixed-case name with a space, a partitioned table, a
    guard), history before and after an instant ``mid``, a sealed block and unsealed rows."""
    conn = audit.conn
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY, junk text, v text, m mood)")
    conn.execute('CREATE TABLE "Mixed Case" ("Id" int PRIMARY KEY, "Val ue" text)')
    conn.execute(
        "CREATE TABLE parted (id int, region text, n int, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)"
    )
    conn.execute("CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')")
    conn.execute("CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')")
    audit.enable("plain", MIXED, "parted")
    audit.guard("plain", max_rows=100)
    with audit.actor("alice"):
        conn.execute("INSERT INTO plain VALUES (1, 'j1', 'one', 'sad'), (2, 'j2', 'two', 'happy')")
    early = now(conn)
    # A dropped column: pg_restore gives the columns after it other attribute numbers.
    conn.execute("ALTER TABLE plain DROP COLUMN junk")
    # A table dropped after its history was recorded: not found by name after the move.
    with audit.actor("alice"):
        conn.execute("""INSERT INTO "Mixed Case" VALUES (1, 'a'), (2, 'b')""")
        conn.execute("INSERT INTO parted VALUES (1, 'eu', 10), (2, 'us', 20)")
    mid = now(conn)
    with audit.actor("bob"):
        conn.execute("UPDATE plain SET v = 'uno', m = 'happy' WHERE id = 1")
        conn.execute("DELETE FROM plain WHERE id = 2")
        conn.execute("""UPDATE "Mixed Case" SET "Val ue" = 'B' WHERE "Id" = 2""")
        conn.execute("UPDATE parted_eu SET n = 11")  # straight into a partition
    assert audit.checkpoint()["seq"] == 1
    conn.execute("INSERT INTO plain VALUES (3, 'three', 'sad')")  # not sealed yet
    # A table dropped after its history was recorded: not found by name after the move. (pad:
    # OIDs used up before it, so that another cluster's restore stays below its OID.)
    conn.execute("CREATE TABLE pad (id int)")
    for n in range(pad):
        conn.execute(f"CREATE INDEX pad_{n} ON pad (id)")
    conn.execute("DROP TABLE pad")
    conn.execute("CREATE TABLE gone (id int PRIMARY KEY)")
    gone_oid = oid(conn, "gone")
    audit.enable("gone")
    conn.execute("INSERT INTO gone VALUES (1), (2)")
    audit.disable("gone")
    conn.execute("DROP TABLE gone")
    return {
        "mid": mid,
        "history": {t: _history(audit, t) for t in ("plain", MIXED, "parted")},
        "plain_at_mid": list(audit.table_at("plain", mid)),
        "plain_at_early": list(audit.table_at("plain", early)),
        "early": early,
        "gone_oid": gone_oid,
        "gone": conn.execute(
            "SELECT id, op, pk FROM audit.change WHERE table_name = 'gone' ORDER BY id"
        ).fetchall(),
        "mixed_at_mid": list(audit.table_at(MIXED, mid)),
        "parted_at_mid": list(audit.table_at("parted", mid)),
        "row_at_mid": audit.row_at("plain", 1, mid),
        "oids": {t: oid(conn, t) for t in ("plain", MIXED, "parted")},
    }


def qualified(table: str) -> str:
    return table if "." in table else f"public.{table}"


def _history(audit: Audit, table: str) -> list[tuple[Any, ...]]:
    return [(h["id"], h["op"], h["pk"], h["old"], h["new"]) for h in audit.history(table)]


def check_after_move(audit: Audit, before: dict[str, Any]) -> None:
    """History, row-at, table-at, new captures, verify and revert across the move."""
    conn = audit.conn
    mid = before["mid"]
    for table, rows in before["history"].items():
        assert _history(audit, table) == rows, table
    assert list(audit.table_at("plain", mid)) == before["plain_at_mid"]
    assert list(audit.table_at("plain", before["early"])) == before["plain_at_early"]
    assert before["plain_at_early"] == [
        {"id": 1, "v": "one", "m": "sad"},
        {"id": 2, "v": "two", "m": "happy"},
    ]
    # The dropped table's history is kept, under an OID no table of the database has.
    gone = conn.execute(
        "SELECT id, op, pk FROM audit.change WHERE table_name = 'gone' ORDER BY id"
    ).fetchall()
    assert gone == before["gone"]
    assert conn.execute(
        "SELECT count(*) FROM audit.change AS c JOIN pg_class AS k ON k.oid = c.relid"
        " WHERE c.table_name = 'gone' AND k.relnamespace <> 'audit'::regnamespace"
    ).fetchone() == (0,)
    assert list(audit.table_at(MIXED, mid)) == before["mixed_at_mid"]
    assert list(audit.table_at("parted", mid)) == before["parted_at_mid"]
    assert audit.row_at("plain", 1, mid) == before["row_at_mid"]
    states = {s["table"]: s["state"] for s in audit.status()}
    assert states == {
        **dict.fromkeys(("public.plain", MIXED, "public.parted"), "ok"),
        "public.gone": "table dropped",
    }
    assert [d for d in audit.doctor() if d["severity"] != "info"] == []
    assert audit.verify() == []
    # New writes are captured under the OIDs here, partitions included.
    conn.execute("UPDATE plain SET v = 'moved' WHERE id = 3")
    conn.execute("INSERT INTO parted_us VALUES (5, 'us', 50)")
    conn.execute("""INSERT INTO "Mixed Case" VALUES (9, 'z')""")
    rows = conn.execute(
        "SELECT relid, table_name FROM audit.change ORDER BY id DESC LIMIT 3"
    ).fetchall()
    assert rows == [
        (oid(conn, MIXED), "Mixed Case"),
        (oid(conn, "parted"), "parted"),
        (oid(conn, "plain"), "plain"),
    ]
    # The guard follows its table: an UPDATE of more than 100 rows in one statement is refused.
    with pytest.raises(psycopg.Error, match="guard"), conn.transaction():
        conn.execute("UPDATE plain SET v = v")  # 2 rows: allowed
        conn.execute("INSERT INTO plain SELECT g, 'x', 'sad' FROM generate_series(10, 200) g")
        conn.execute("UPDATE plain SET v = v")
    assert [g["blocked"] for g in audit.guard_list()] == [1]
    audit.checkpoint()
    assert audit.verify() == []
    result = audit.revert(table="plain", to=mid, by="restorer")
    assert result.txid is not None
    got = conn.execute("SELECT id, v, m::text FROM plain ORDER BY id").fetchall()
    assert got == [(1, "one", "sad"), (2, "two", "happy")]
    audit.checkpoint()
    assert audit.verify() == []


@pytest.fixture
def moved(pg_server: PgServer, dsn: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A database with history, dumped and restored into a new database of the same server."""
    install = _install(pg_server)
    with Audit.connect(dsn) as audit:
        audit.install()
        before = build_history(audit)
    with fresh_database(pg_server, f"moved_{os.getpid()}_{tmp_path.name[-8:]}".lower()) as target:
        dump_restore(install, dsn, target, tmp_path / "db.dump")
        yield target, before


def test_restore_into_another_database(moved: tuple[str, dict[str, Any]]) -> None:
    target, before = moved
    with Audit.connect(target) as audit:
        conn = audit.conn
        # Every table has a new OID: capture of it has stopped, and doctor says so.
        assert all(oid(conn, t) != o for t, o in before["oids"].items())
        conn.execute("INSERT INTO plain VALUES (4, 'lost', 'sad')")
        assert conn.execute(
            "SELECT count(*) FROM audit.change WHERE pk = '{\"id\": 4}'"
        ).fetchone() == (0,)
        conn.execute("DELETE FROM plain WHERE id = 4")
        # An install (repair) before the reattach leaves the registry alone: its OIDs would
        # name other tables.
        registry = conn.execute("SELECT * FROM audit.tracked_table ORDER BY relid").fetchall()
        audit.install(repair=True)
        assert (
            conn.execute("SELECT * FROM audit.tracked_table ORDER BY relid").fetchall() == registry
        )
        problems = audit.doctor()
        flagged = {p["object"] for p in problems if p["problem"].startswith("moved:")}
        assert flagged == {"public.plain", 'public."Mixed Case"', "public.parted"}
        assert {p["fix"] for p in problems if p["fix"]} == {"SELECT * FROM audit.reattach()"}
        gone = [p for p in problems if p["object"] == "public.gone"]
        assert [p["severity"] for p in gone] == ["warning"] and "not found by name" in gone[0][
            "problem"
        ]
        plan = {
            r["table_name"]: (r["old_relid"], r["action"]) for r in audit.reattach(dry_run=True)
        }
        assert plan == {
            **{qualified(t): (o, "moved") for t, o in before["oids"].items()},
            "public.gone": (before["gone_oid"], "missing: history kept under its OID"),
        }
        assert audit.doctor() == problems  # a dry run changes nothing
        result = cli(target, "doctor", "--format", "json")
        assert result.exit_code == 7 and "moved:" in result.output
        # doctor --fix runs the reattach.
        result = cli(target, "doctor", "--fix", "--yes")
        assert "audit.reattach()" in result.output
        rows = conn.execute(
            "SELECT old_relid, new_relid, table_name FROM audit.relocation ORDER BY id"
        ).fetchall()
        assert sorted(rows) == sorted(
            (o, oid(conn, t), t.split(".")[-1].strip('"')) for t, o in before["oids"].items()
        )
        check_after_move(audit, before)
        # Nothing left to move: reattach again changes nothing.
        again = {r["table_name"]: r["action"] for r in audit.reattach()}
        assert again == {
            **dict.fromkeys(map(qualified, before["oids"]), "unchanged"),
            "public.gone": "missing: history kept under its OID",
        }
        assert conn.execute("SELECT count(*) FROM audit.relocation").fetchone() == (3,)


def test_tampered_row_from_before_the_move_is_caught(moved: tuple[str, dict[str, Any]]) -> None:
    target, _before = moved
    with Audit.connect(target) as audit:
        audit.reattach()
        assert audit.verify() == []
        assert audit.conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (0,)
        # A sealed row of before the move, edited (its relid untouched: only its content)...
        audit.conn.execute(
            "UPDATE audit.change SET new = jsonb_set(new, '{v}', '\"forged\"')"
            " WHERE id = (SELECT min(id) FROM audit.change WHERE table_name = 'plain')"
        )
        assert any("edited" in p["problem"] for p in audit.verify())
        assert audit.conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (1,)
        audit.conn.execute(
            "UPDATE audit.change SET new = jsonb_set(new, '{v}', '\"one\"')"
            " WHERE id = (SELECT min(id) FROM audit.change WHERE table_name = 'plain')"
        )
        assert audit.verify() == []
        # ... or filed under another table: caught too.
        audit.conn.execute(
            "UPDATE audit.change SET relid = %s"
            " WHERE id = (SELECT min(id) FROM audit.change WHERE table_name = 'plain')",
            (oid(audit.conn, "parted"),),
        )
        assert any("edited" in p["problem"] for p in audit.verify())
        assert audit.conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (1,)
        audit.conn.execute(
            "UPDATE audit.change SET relid = %s"
            " WHERE id = (SELECT min(id) FROM audit.change WHERE table_name = 'plain')",
            (oid(audit.conn, "plain"),),
        )
        assert audit.verify() == []
        # A relocation edited (its journal trigger off, as a superuser could): caught.
        audit.conn.execute("ALTER TABLE audit.relocation DISABLE TRIGGER pgaudit_journal")
        audit.conn.execute("UPDATE audit.relocation SET last_change = 0")
        problems = [p["problem"] for p in audit.verify()]
        assert any("edited" in p for p in problems), problems
        assert any("audit.relocation row" in p for p in problems), problems


def test_reattach_from_the_cli_and_privileges(
    moved: tuple[str, dict[str, Any]], pg_server: PgServer, make_role: Any
) -> None:
    target, before = moved
    result = cli(target, "reattach", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    assert '"moved"' in result.output
    stranger = make_role("stranger")
    with psycopg.connect(target, autocommit=True) as admin:
        admin.execute(f"GRANT pgaudit_reader TO {stranger}")
    dbname = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
    with (
        psycopg.connect(pg_server.dsn_for(str(dbname), stranger)) as other,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner of the audit"),
    ):
        other.execute("SELECT * FROM audit.reattach()")
    result = cli(target, "reattach", "--yes")
    assert result.exit_code == 0, result.output
    with Audit.connect(target) as audit:
        assert [d for d in audit.doctor() if d["severity"] != "info"] == []
        assert _history(audit, "plain") == before["history"]["plain"]


def test_not_installed(dsn: str) -> None:
    with Audit.connect(dsn) as audit, pytest.raises(AuditError, match="not installed"):
        audit.reattach()
    result = cli(dsn, "reattach")
    assert result.exit_code != 0
    assert "not installed" in result.output


def _resetwal(cluster: TempCluster, epoch: int) -> None:
    """Stop the cluster, give its transaction ids the xid epoch ``epoch``, start it again."""
    cluster.stop()  # its folder was given: kept
    cluster._run([cluster._bindir / "pg_resetwal", "-e", str(epoch), "-D", cluster.data_dir])
    cluster.start()


@pytest.fixture
def cluster_dirs() -> Iterator[list[Path]]:
    """Two folders for clusters kept across a restart (under /tmp: the server's user reaches them)."""
    dirs = [Path(tempfile.mkdtemp(prefix="pgaudit-move-", dir="/tmp")) for _ in range(2)]
    yield dirs
    for folder in dirs:
        shutil.rmtree(folder, ignore_errors=True)


def test_restore_into_another_cluster(
    pg_server: PgServer, cluster_dirs: list[Path], tmp_path: Path
) -> None:
    install = _install(pg_server)
    source = TempCluster(install, base_dir=cluster_dirs[0])
    target = TempCluster(install, base_dir=cluster_dirs[1])
    try:
        source.start()
        target.start()
        # The source's transaction ids in epoch 1: the target's counter (epoch 0) is below them.
        _resetwal(source, 1)
        with psycopg.connect(source.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE app")
        with Audit.connect(source.dsn_for("app")) as audit:
            audit.install()
            # The source's OID counter well ahead of where the restore will leave the
            # target's, so that the target's next relations take the tables' old OIDs.
            audit.conn.execute(
                "DO $$ BEGIN FOR i IN 1..300 LOOP"
                " CREATE TABLE oid_pusher (); DROP TABLE oid_pusher; END LOOP; END $$"
            )
            before = build_history(audit, pad=300)
        with psycopg.connect(target.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE app")
            admin.execute("CREATE ROLE pgaudit_reader NOLOGIN")
        app = target.dsn_for("app")
        dump_restore(install, source.dsn_for("app"), app, tmp_path / "db.dump")
        with Audit.connect(app) as audit:
            problems = audit.doctor()
            txids = [p for p in problems if p["object"] == "transaction ids"]
            assert len(txids) == 1 and "pg_resetwal -e 2 " in txids[0]["problem"], problems
            assert all(p["fix"] is None for p in problems if p["problem"].startswith("moved:"))
            with pytest.raises(AuditError, match="transaction ids") as refused:
                audit.reattach()
            assert "pg_resetwal -e 2 " in str(refused.value)
            assert audit.conn.execute("SELECT count(*) FROM audit.relocation").fetchone() == (0,)
            system = audit.conn.execute("SELECT system_identifier FROM audit.home").fetchone()
        result = cli(app, "reattach", "--yes")
        assert result.exit_code != 0
        assert "pg_resetwal -e 2 " in result.output
        _resetwal(target, 2)
        with Audit.connect(app) as audit:
            conn = audit.conn
            # The dropped table's old OID taken by a relation here: its history must go
            # under a placeholder's OID (one index at a time, until one gets that OID).
            conn.execute("CREATE TABLE filler (id int)")
            for n in range(3000):
                made = oid(
                    conn, conn.execute(f"CREATE INDEX fill_{n} ON filler (id)") and f"fill_{n}"
                )
                if made >= before["gone_oid"]:
                    break
            assert made == before["gone_oid"], "the OID counter passed the dropped table's OID"
            # An old OID that is another relation's here (the source's counter was ahead, so
            # the indexes above took the old OIDs): the single remapping statement per table
            # must not mix them up.
            new = {t: oid(conn, t) for t in before["oids"]}
            collisions = set(before["oids"].values()) & (
                set(new.values()) | {r[0] for r in conn.execute("SELECT oid FROM pg_class")}
            )
            plan = {r["table_name"]: r["action"] for r in audit.reattach(dry_run=True)}
            assert {plan[qualified(t)] for t in before["oids"]} == {"moved"}, plan
            assert plan["public.gone"] == "missing: history kept under a placeholder", plan
            result = cli(app, "reattach", "--yes")
            assert result.exit_code == 0, result.output
            assert conn.execute("SELECT system_identifier FROM audit.home").fetchone() != system
            check_after_move(audit, before)
            again = {r["table_name"]: r["action"] for r in audit.reattach()}
            assert again["public.gone"] == "missing: history kept under a placeholder"
            assert {again[qualified(t)] for t in before["oids"]} == {"unchanged"}
            assert collisions, "no OID of before the move is another relation's here"
    finally:
        source.stop()
        target.stop()


def test_pg_upgrade_keeps_history(pg_server: PgServer, cluster_dirs: list[Path]) -> None:
    """pg_upgrade keeps OIDs and the transaction counter: history and capture just work, and
    doctor notes the new home (info), which reattach records without moving anything."""
    _install(pg_server)
    installs = {i.major: i for i in available_installs()}
    if len(installs) < 2:
        pytest.skip("pg_upgrade needs the binaries of two PostgreSQL majors; found only one")
    old, new = installs[min(installs)], installs[max(installs)]
    if not (new.bindir / "pg_upgrade").exists():
        pytest.skip(f"no pg_upgrade in {new.bindir}")
    source = TempCluster(old, base_dir=cluster_dirs[0])
    target = TempCluster(new, base_dir=cluster_dirs[1])
    try:
        source.start()
        target.start()  # initdb of the new major's cluster
        with psycopg.connect(source.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE app")
        with Audit.connect(source.dsn_for("app")) as audit:
            audit.install()
            before = build_history(audit)
            revision = audit.installed_revision()
        source.stop()
        target.stop()
        target._run(
            [
                target._bindir / "pg_upgrade",
                "-b", source._bindir, "-B", target._bindir,
                "-d", source.data_dir, "-D", target.data_dir,
                "-p", str(source.port), "-P", str(target.port), "-U", "postgres",
            ],
            timeout=600,
        )  # fmt: skip
        target.start()
        with Audit.connect(target.dsn_for("app")) as audit:
            assert audit.installed_revision() == revision
            assert {t: oid(audit.conn, t) for t in before["oids"]} == before["oids"]
            notes = [p for p in audit.doctor() if p["object"] == "schema audit"]
            assert [p["severity"] for p in notes] == ["info"]
            assert "every table kept its OID" in notes[0]["problem"]
            actions = {r["table_name"]: r["action"] for r in audit.reattach()}
            assert actions == {
                **dict.fromkeys(map(qualified, before["oids"]), "unchanged"),
                "public.gone": "missing: history kept under its OID",
            }
            assert [p for p in audit.doctor() if p["object"] == "schema audit"] == []
            assert audit.conn.execute("SELECT count(*) FROM audit.relocation").fetchone() == (0,)
            check_after_move(audit, before)
    finally:
        source.stop()
        target.stop()


def test_a_copy_of_an_empty_audit_schema_adopts_its_database(pg_server: PgServer) -> None:
    """CREATE DATABASE ... TEMPLATE of a database whose audit schema registers nothing: nothing
    to reattach, so doctor says nothing, and the first enable records the copy as the home. A
    copy with a registered table is noted (info: every table kept its OID)."""
    src, empty, full = "pgaudit_copy_src", "pgaudit_copy_empty", "pgaudit_copy_full"
    with fresh_database(pg_server, src) as source:
        with Audit.connect(source) as audit:
            audit.install()
            audit.conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            audit.conn.commit()
        with fresh_database(pg_server, empty, template=src) as copy:
            with Audit.connect(copy) as audit:
                assert [p for p in audit.doctor() if p["object"] == "schema audit"] == []
                audit.enable("t")
                home = audit.conn.execute("SELECT database_name FROM audit.home").fetchone()
                assert home == (empty,)
                assert [p for p in audit.doctor() if p["object"] == "schema audit"] == []
                audit.conn.commit()
            with (
                fresh_database(pg_server, full, template=empty) as second,
                Audit.connect(second) as again,
            ):
                notes = [p for p in again.doctor() if p["object"] == "schema audit"]
                assert [n["severity"] for n in notes] == ["info"]
                assert "every table kept its OID" in notes[0]["problem"]
