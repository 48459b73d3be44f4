"""The hash chain verified in the client, against a superuser who controls the database.

A superuser can edit any row and replace any function of the audit schema, including
``audit.verify`` and ``audit._block_digest``. ``verify --against <checkpoint>`` recomputes the
chain in Python from the raw rows, and the chain covers the registry, the column layouts and the
history breaks through the journal: every attack below must be detected from the CLI (exit 7)
and the Python API, while an untouched log verifies clean (exit 0), also after an upgrade from
revision 0003 with blocks sealed by 0003.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.chain import record_text
from pgaudit_tool.cli import main
from pgaudit_tool.errors import InvalidInput
from tests.conftest import PgServer
from tests.released import install_released

Conn = psycopg.Connection[Any]


def cli(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--dsn", dsn, *args])


def write_history(conn: Conn) -> None:
    """Changes, a layout change and a history break (when the schema has them)."""
    conn.execute("UPDATE t SET amount = amount + 1 WHERE id = 1")
    conn.execute("ALTER TABLE t ADD COLUMN note text")  # the guard records a new layout
    conn.execute("INSERT INTO t VALUES (3, 30, 's3', 'n')")
    conn.execute("ALTER TABLE t ALTER COLUMN amount TYPE bigint")  # rewrite: a history break


@pytest.fixture
def sealed(audit: Audit, tmp_path: Path) -> tuple[Audit, Path]:
    """A log with two sealed blocks (the kept head is the second) and unsealed rows after."""
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, amount int, secret text)")
    audit.enable("t", exclude=["secret"])
    with audit.actor("alice", {"ticket": "T-1"}):
        conn.execute("INSERT INTO t VALUES (1, 10, 's1'), (2, 20, 's2')")
    assert audit.checkpoint()["seq"] == 1
    write_history(conn)
    kept = tmp_path / "head.json"
    assert cli(conn.info.dsn, "checkpoint", "--output", str(kept)).exit_code == 0
    assert json.loads(kept.read_text())["seq"] == 2
    conn.execute("UPDATE t SET amount = 0 WHERE id = 2")  # not sealed yet
    return audit, kept


def assert_intact(audit: Audit, kept: Path) -> None:
    head = json.loads(kept.read_text())
    assert audit.verify() == [] and audit.verify(head) == []
    result = cli(audit.conn.info.dsn, "verify", "--against", str(kept))
    assert result.exit_code == 0, result.output
    assert "intact" in result.stderr


def assert_detected(audit: Audit, kept: Path, name: str) -> list[dict[str, Any]]:
    problems = audit.verify(json.loads(kept.read_text()))
    assert problems, f"{name} was not detected by the API"
    result = cli(audit.conn.info.dsn, "verify", "--against", str(kept), "--format", "json")
    assert result.exit_code == 7, result.output
    assert json.loads(result.stdout) and "NOT intact" in result.stderr
    return problems


def test_untouched_log_verifies_clean(sealed: tuple[Audit, Path]) -> None:
    audit, kept = sealed
    assert_intact(audit, kept)
    # The database's own check agrees with the client's recomputation.
    assert audit.conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (0,)
    journal = audit.conn.execute(
        "SELECT relation, count(*) FROM audit.journal GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert dict(journal)["table_layout"] >= 2 and dict(journal)["tracked_table"] >= 1
    # What was unsealed gets sealed and still verifies.
    assert audit.checkpoint()["seq"] == 3
    assert audit.verify() == []
    report = audit.verify_report()
    assert report.unsealed == {"transaction": 0, "change": 0, "journal": 0}


def test_legitimate_registry_and_layout_changes_verify_clean(
    audit: Audit, pg_server: PgServer, make_role: Callable[..., str], tmp_path: Path
) -> None:
    """Every way the tool itself writes the registry, the layouts and the history breaks, by
    the owner and through an ordinary writer's capture, with and without the guard, is
    journaled so that verify finds nothing to report."""
    conn = audit.conn
    role = make_role("app")
    conn.execute(sql.SQL("CREATE SCHEMA shop AUTHORIZATION {}").format(sql.Identifier(role)))
    app = psycopg.connect(pg_server.dsn_for(conn.info.dbname, user=role), autocommit=True)
    with app:
        app.execute("CREATE TABLE shop.items (id int PRIMARY KEY, name text, secret text)")
        app.execute(
            "CREATE TABLE shop.parts (id int, region text, PRIMARY KEY (id, region))"
            " PARTITION BY LIST (region);"
            "CREATE TABLE shop.parts_eu PARTITION OF shop.parts FOR VALUES IN ('eu')"
        )
        audit.enable("shop.items", exclude=["secret"])
        audit.enable("shop.parts")
        app.execute(
            "INSERT INTO shop.items VALUES (1, 'a', 's'); INSERT INTO shop.parts VALUES (1, 'eu')"
        )
        first = tmp_path / "first.json"
        assert cli(conn.info.dsn, "checkpoint", "--output", str(first)).exit_code == 0
        audit.enable("shop.items", exclude=["name", "secret"])  # exclusions changed
        app.execute("ALTER TABLE shop.items RENAME COLUMN name TO title")  # the guard rewrites
        app.execute("ALTER TABLE shop.items ALTER COLUMN id TYPE bigint")  # a history break
        app.execute("CREATE TABLE shop.parts_us PARTITION OF shop.parts FOR VALUES IN ('us')")
        app.execute("UPDATE shop.items SET title = 'b'; INSERT INTO shop.parts VALUES (2, 'us')")
        conn.execute("ALTER EVENT TRIGGER pgaudit_guard_ddl DISABLE")
        audit.refresh("shop.items")  # capture checks the layout itself now
        app.execute("ALTER TABLE shop.items ADD COLUMN note text")
        app.execute("INSERT INTO shop.items VALUES (2, 'c', 's', 'n')")  # capture records it
        conn.execute("ALTER EVENT TRIGGER pgaudit_guard_ddl ENABLE ALWAYS")
        audit.refresh("shop.items")
        audit.disable("shop.parts")
        audit.enable("shop.parts")
        app.execute("DELETE FROM shop.items WHERE id = 1")
    assert audit.checkpoint()["seq"] == 2
    assert audit.verify() == []
    assert_intact(audit, first)
    relations = conn.execute("SELECT DISTINCT relation, op FROM audit.journal").fetchall()
    assert {("table_layout", "I"), ("tracked_table", "U"), ("history_break", "I")} <= set(relations)


def test_a_reader_verifies_against_a_checkpoint(
    sealed: tuple[Audit, Path], pg_server: PgServer, make_role: Callable[..., str]
) -> None:
    """pgaudit_reader may read every table the client-side check reads (the journal too)."""
    audit, kept = sealed
    reader = make_role("reviewer")
    audit.conn.execute(sql.SQL("GRANT pgaudit_reader TO {}").format(sql.Identifier(reader)))
    dsn = pg_server.dsn_for(audit.conn.info.dbname, user=reader)
    result = cli(dsn, "verify", "--against", str(kept))
    assert result.exit_code == 0, result.output
    audit.conn.execute("UPDATE audit.transaction SET actor = 'mallory' WHERE actor = 'alice'")
    assert cli(dsn, "verify", "--against", str(kept)).exit_code == 7


def test_verify_leaves_the_callers_transaction_as_it_was(audit: Audit, dsn: str) -> None:
    audit.conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    audit.enable("t")
    audit.conn.execute("INSERT INTO t VALUES (1)")
    audit.checkpoint()
    with Audit.connect(dsn) as other:
        other.conn.autocommit = False
        other.conn.execute("SET TIME ZONE 'Europe/Paris'; SELECT 1")
        assert other.verify() == []
        assert other.conn.execute("SHOW timezone").fetchone() == ("Europe/Paris",)
        other.conn.rollback()


def test_rows_with_every_quoting_case_verify(audit: Audit, tmp_path: Path) -> None:
    """Names, actors and values with quotes, backslashes, parentheses, commas, whitespace,
    empty strings and non-ASCII: the client's record text equals the server's."""
    conn = audit.conn
    conn.execute('CREATE SCHEMA "sp ace"')
    conn.execute('CREATE TABLE "sp ace"."we""ird (x,y)\\" (id text PRIMARY KEY, v text)')
    audit.enable('"sp ace"."we""ird (x,y)\\"')
    conn.execute("SET application_name = ''")
    for actor in ['a"b', "c\\d", "(e,f)", "tab\there", "line\nbreak", "", "é ü ✓"]:
        with audit.actor(actor, {"k": actor}):
            conn.execute('INSERT INTO "sp ace"."we""ird (x,y)\\" VALUES (%s, %s)', (actor, actor))
    assert audit.checkpoint()["seq"] == 1
    assert audit.verify() == []
    conn.execute("UPDATE audit.transaction SET actor = actor || ' ' WHERE actor = %s", ['a"b'])
    assert audit.verify()


def test_record_text_matches_postgresql(conn: Conn) -> None:
    values = ["plain", "", 'q"uote', "back\\slash", "(p)", "a,b", " ", "\t\n\v\f\r", "é", None]
    row = conn.execute(
        "SELECT ROW(" + ", ".join(["%s::text"] * len(values)) + ")::text", values
    ).fetchone()
    assert row is not None
    raw = [None if v is None else v.encode() for v in values]
    assert record_text(raw).decode() == row[0]


def silently(table: str, statement: str) -> str:
    """``statement`` with the journal trigger of ``audit.<table>`` disabled around it."""
    alter = f"ALTER TABLE audit.{table} {{}} TRIGGER pgaudit_journal"
    return f"{alter.format('DISABLE')}; {statement}; {alter.format('ENABLE ALWAYS')}"


FIRST_LAYOUT = "valid_from = (SELECT min(valid_from) FROM audit.table_layout)"
LAST_LAYOUT = "valid_from = (SELECT max(valid_from) FROM audit.table_layout)"
SWAP_COLUMNS = "UPDATE audit.table_layout SET columns = columns[2:2] || columns[1:1] || columns[3:]"

# (name, the attack, a phrase the problems must contain)
ATTACKS = [
    (
        "edit a change",
        'UPDATE audit.change SET new = \'{"id": 1, "amount": 99}\' WHERE id = 1',
        "edited",
    ),
    (
        "delete a change",
        "DELETE FROM audit.change WHERE id = (SELECT min(id) FROM audit.change)",
        "inserted or deleted",
    ),
    (
        "edit a transaction",
        "UPDATE audit.transaction SET actor = 'mallory' WHERE actor = 'alice'",
        "edited",
    ),
    (
        "delete a transaction",
        "DELETE FROM audit.transaction WHERE actor = 'alice'",
        "inserted or deleted",
    ),
    ("edit a layout", f"{SWAP_COLUMNS} WHERE {FIRST_LAYOUT}", "was rewritten"),
    (
        "edit a layout, journal trigger off",
        silently("table_layout", f"{SWAP_COLUMNS} WHERE {FIRST_LAYOUT}"),
        "in columns: changed without a journal entry",
    ),
    ("delete a layout", f"DELETE FROM audit.table_layout WHERE {LAST_LAYOUT}", "was deleted"),
    ("truncate the layouts", "TRUNCATE audit.table_layout", "deleted without a journal entry"),
    (
        "unexclude a column, journal trigger off",
        silently(
            "tracked_table",
            "UPDATE audit.tracked_table SET excluded_attnums = '{}', excluded_columns = '{}'",
        ),
        "in excluded_attnums, excluded_columns",
    ),
    (
        "move history_since back",
        "UPDATE audit.tracked_table SET history_since = history_since - interval '1 day'",
        "history_since",
    ),
    ("delete a registry row", "DELETE FROM audit.tracked_table", "registry row was deleted"),
    (
        "edit a history break",
        "UPDATE audit.history_break SET reason = 'nothing happened'",
        "was rewritten",
    ),
    (
        "edit a history break, journal trigger off",
        silently("history_break", "UPDATE audit.history_break SET at = at - interval '1 day'"),
        "in at: changed",
    ),
    ("delete a history break", "DELETE FROM audit.history_break", "was deleted"),
    (
        "edit a journal entry",
        'UPDATE audit.journal SET new = new || \'{"key_columns": ["x"]}\''
        " WHERE relation = 'tracked_table'",
        "edited",
    ),
    (
        "delete a journal entry",
        "DELETE FROM audit.journal WHERE id = (SELECT max(id) FROM audit.journal"
        " WHERE relation = 'table_layout')",
        "inserted or deleted",
    ),
    ("drop a block", "DELETE FROM audit.seal WHERE seq = 1", "block 1 is missing"),
    (
        "rewrite a block",
        "UPDATE audit.seal SET changes = changes + 1 WHERE seq = 2",
        "inserted or deleted",
    ),
]


@pytest.mark.parametrize(("name", "attack", "expect"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_superuser_tampering_is_detected(
    sealed: tuple[Audit, Path], name: str, attack: str, expect: str
) -> None:
    audit, kept = sealed
    assert_intact(audit, kept)
    if "history_break" in attack:
        found = audit.conn.execute("SELECT count(*) FROM audit.history_break").fetchone()
        assert found is not None and found[0] >= 1  # the rewrite above recorded a break
    audit.conn.execute(attack)
    problems = assert_detected(audit, kept, name)
    assert any(expect in p["problem"] for p in problems), problems


def test_replaced_check_functions_do_not_help(sealed: tuple[Audit, Path]) -> None:
    """The attacker edits the log, then makes the database's own check say "intact": a
    digest function answering from a copy of the untouched rows, and a verify that returns
    nothing. The client does not call them."""
    audit, kept = sealed
    conn = audit.conn
    conn.execute(
        "CREATE TABLE public.saved AS SELECT s.txid_from, d.* FROM audit.seal AS s,"
        " audit._block_digest(s.txid_from, s.txid_to) AS d"
    )
    conn.execute('UPDATE audit.change SET new = \'{"id": 1, "amount": 99}\' WHERE id = 1')
    conn.execute(
        "CREATE OR REPLACE FUNCTION audit._block_digest(p_from xid8, p_to xid8,"
        " OUT transactions bigint, OUT changes bigint, OUT journal bigint, OUT digest bytea)"
        " LANGUAGE sql STABLE AS $$ SELECT transactions, changes, journal, digest"
        " FROM public.saved WHERE txid_from = p_from $$"
    )
    assert conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (0,)  # fooled
    problems = assert_detected(audit, kept, "edit under a replaced _block_digest")
    assert any("edited" in p["problem"] for p in problems)
    conn.execute(
        "CREATE OR REPLACE FUNCTION audit.verify(p_head_seq bigint DEFAULT NULL,"
        " p_head_hash bytea DEFAULT NULL) RETURNS TABLE (seq bigint, problem text)"
        " LANGUAGE sql AS $$ SELECT NULL::bigint, NULL::text WHERE false $$"
    )
    conn.execute("DELETE FROM audit.change WHERE id = 2")
    assert conn.execute("SELECT count(*) FROM audit.verify()").fetchone() == (0,)  # fooled
    assert_detected(audit, kept, "delete under a replaced verify")


def test_resealed_log_differs_from_the_kept_head(sealed: tuple[Audit, Path]) -> None:
    """Edit, then re-seal a consistent chain from scratch with the database's own functions."""
    audit, kept = sealed
    conn = audit.conn
    conn.execute("UPDATE audit.table_layout SET columns = array_replace(columns, 'amount', 'x')")
    conn.execute("DELETE FROM audit.journal; DELETE FROM audit.seal")
    conn.execute(
        "INSERT INTO audit.journal (relation, op, new)"
        " SELECT 'tracked_table', 'B', to_jsonb(t) FROM audit.tracked_table t"
        " UNION ALL SELECT 'table_layout', 'B', to_jsonb(l) FROM audit.table_layout l"
        " UNION ALL SELECT 'history_break', 'B', to_jsonb(b) FROM audit.history_break b"
    )
    conn.execute("SET timezone = 'UTC'")
    audit.checkpoint()
    problems = assert_detected(audit, kept, "a re-sealed chain")
    assert any("checkpoint" in p["problem"] for p in problems)


# -- upgrade from 0003 ---------------------------------------------------------------------------


def test_blocks_sealed_by_0003_stay_verifiable_after_upgrade(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    install_released(dsn, "0003")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, amount int, secret text)")
    conn.execute("SELECT audit.enable('t', '{secret}')")
    conn.execute("INSERT INTO t VALUES (1, 10, 's1'), (2, 20, 's2')")
    conn.execute("SELECT audit.seal()")
    conn.execute("UPDATE t SET amount = amount + 1")
    old = conn.execute(
        "SELECT 'pgaudit-tool checkpoint 1' AS format, seq, encode(hash, 'hex') AS hash,"
        " txid_to::text AS txid_to FROM audit.seal()"
    ).fetchone()
    assert old is not None and old[1] == 2
    kept = tmp_path / "head-0003.json"
    kept.write_text(json.dumps(dict(zip(("format", "seq", "hash", "txid_to"), old, strict=True))))
    with Audit.connect(dsn) as audit:
        audit.install()
        assert_intact(audit, kept)
        write_history(conn)
        assert audit.checkpoint()["seq"] == 3
        assert_intact(audit, kept)
        # The baseline of the registry written by the upgrade is sealed: edit it silently.
        conn.execute(
            "ALTER TABLE audit.tracked_table DISABLE TRIGGER pgaudit_journal;"
            " UPDATE audit.tracked_table SET key_columns = '{amount}';"
            " ALTER TABLE audit.tracked_table ENABLE ALWAYS TRIGGER pgaudit_journal"
        )
        problems = assert_detected(audit, kept, "a registry edit after the upgrade")
        assert any("tracked_table" in p["problem"] for p in problems)
        # And a row sealed by 0003 itself.
        conn.execute("UPDATE audit.change SET op = 'U' WHERE id = 1")
        problems = assert_detected(audit, kept, "a change sealed by 0003")
        assert any(p["seq"] == 1 for p in problems)


# -- malformed heads and unwritable outputs ------------------------------------------------------


BAD_HEADS = {
    "not json": "this is not json",
    "a list": "[1, 2]",
    "no format": '{"seq": 1, "hash": "' + "0" * 64 + '"}',
    "seq a string": '{"format": "pgaudit-tool checkpoint 1", "seq": "one", "hash": "'
    + "0" * 64
    + '"}',
    "seq a bool": '{"format": "pgaudit-tool checkpoint 1", "seq": true, "hash": "'
    + "0" * 64
    + '"}',
    "hash a number": '{"format": "pgaudit-tool checkpoint 1", "seq": 1, "hash": 12}',
    "hash not hex": '{"format": "pgaudit-tool checkpoint 1", "seq": 1, "hash": "' + "z" * 64 + '"}',
    "txid_to a list": '{"format": "pgaudit-tool checkpoint 1", "seq": 1, "hash": "'
    + "0" * 64
    + '", "txid_to": []}',
    "nothing sealed": '{"format": "pgaudit-tool checkpoint 1", "seq": null}',
}


@pytest.mark.parametrize("case", [*BAD_HEADS, "missing file", "a directory", "binary"])
def test_malformed_head_is_bad_input(audit: Audit, tmp_path: Path, case: str) -> None:
    path = tmp_path / "head.json"
    if case == "a directory":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif case != "missing file":
        path.write_text(BAD_HEADS[case])
    result = cli(audit.conn.info.dsn, "verify", "--against", str(path))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stderr.startswith("error: ") and str(path) in result.stderr
    if case in BAD_HEADS and case != "not json":
        with pytest.raises(InvalidInput):
            audit.verify(json.loads(BAD_HEADS[case]))


def unsealed_state(conn: Conn) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM audit.seal), (SELECT changes FROM audit.unsealed())"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    "where", ["missing directory", "under a regular file", "in /proc", "a directory"]
)
def test_checkpoint_to_an_unwritable_path_seals_nothing(
    audit: Audit, tmp_path: Path, where: str
) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    audit.enable("t")
    conn.execute("INSERT INTO t VALUES (1)")
    (tmp_path / "file").write_text("x")
    target = {
        "missing directory": tmp_path / "nowhere" / "head.json",
        "under a regular file": tmp_path / "file" / "head.json",
        "in /proc": Path("/proc/pgaudit-head.json"),
        "a directory": tmp_path,
    }[where]
    before = unsealed_state(conn)
    assert before[1] == 1
    result = cli(conn.info.dsn, "checkpoint", "--output", str(target))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "nothing was sealed" in result.stderr and str(target) in result.stderr
    assert unsealed_state(conn) == before
    with pytest.raises(InvalidInput):
        audit.checkpoint(output=target)
    assert unsealed_state(conn) == before
    assert target.is_dir() if where == "a directory" else not target.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # no temporary file left behind
    # A good path seals and saves together.
    good = tmp_path / "head.json"
    assert cli(conn.info.dsn, "checkpoint", "--output", str(good)).exit_code == 0
    assert json.loads(good.read_text())["seq"] == 1 and unsealed_state(conn) == (1, 0)
