"""Revert: every operation undone, an incident put right around legitimate work, conflicts,
the revert recorded and itself revertible, the printed script equal to the real thing, and a
property test against replaying the workload without the reverted transactions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import (
    DatabaseError,
    InvalidInput,
    LockTimeout,
    PermissionDenied,
    RevertConflict,
    TableNotSuitable,
)
from pgaudit_tool.revert import DEFAULT_ACTOR, RevertSelection
from pgaudit_tool.revert import run as run_revert
from tests.conftest import PgServer

Conn = psycopg.Connection[Any]
EXIT_BAD_INPUT, EXIT_CONFLICT = 2, 6


def now(conn: Conn) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def rows(conn: Conn, query: str | sql.Composed) -> list[tuple[Any, ...]]:
    return conn.execute(query).fetchall()


def assert_same_rows(conn: Conn, left: str, right: str) -> None:
    """Two tables (or queries) hold the same multiset of rows: EXCEPT ALL both ways."""
    for a, b in ((left, right), (right, left)):
        extra = rows(conn, f"(SELECT * FROM {a}) EXCEPT ALL (SELECT * FROM {b})")
        assert extra == [], f"rows in {a} and not in {b}: {extra[:5]}"


def snapshot(conn: Conn, table: str, name: str) -> str:
    conn.execute(f"CREATE TABLE {name} AS SELECT * FROM {table}")
    return name


def last_txid(conn: Conn) -> int:
    row = conn.execute("SELECT max(txid)::text FROM audit.change").fetchone()
    assert row is not None
    return int(row[0])


def change_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM audit.change").fetchone()
    assert row is not None
    return int(row[0])


def invoke(dsn: str, *args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# --------------------------------------------------------------------------- each operation


@pytest.fixture
def items(audit: Audit) -> Audit:
    """A table with an identity (ALWAYS), a generated column, defaults and an excluded column."""
    audit.conn.execute(
        """CREATE TABLE items (
               id     int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               name   text NOT NULL,
               qty    int DEFAULT 1,
               price  numeric(10, 2),
               total  numeric GENERATED ALWAYS AS (qty * price) STORED,
               tags   text[],
               seen   timestamptz DEFAULT '2020-01-01 00:00+00',
               secret text DEFAULT 'unknown')"""
    )
    audit.conn.execute(
        "INSERT INTO items (name, qty, price, tags, secret) VALUES"
        " ('a', 1, 1.50, '{x}', 's1'), ('b', 2, 2.25, '{y,z}', 's2'), ('c', 3, 3.00, NULL, 's3')"
    )
    audit.enable("items", exclude=["secret"])
    return audit


def test_insert_update_delete_truncate_undone(items: Audit) -> None:
    conn = items.conn
    before = snapshot(conn, "items", "before")

    conn.execute("INSERT INTO items (name, price) VALUES ('new', 9)")
    items.revert(txids=[last_txid(conn)])
    assert_same_rows(conn, "items", before)

    # An UPDATE is put back; the excluded column it also changed is left alone.
    conn.execute("UPDATE items SET qty = 7, tags = '{changed}', secret = 'new' WHERE id = 2")
    result = items.revert(changes=[change_count_id(conn)])
    assert result.summary == [
        {"table": "public.items", "action": "UPDATE", "rows": 1, "conflicts": 0}
    ]
    assert rows(conn, "SELECT qty, tags, total, secret FROM items WHERE id = 2") == [
        (2, ["y", "z"], Decimal("4.50"), "new")
    ]

    # A DELETE comes back with its full image: identity value, generated column recomputed,
    # the excluded column (never recorded) at its default.
    conn.execute("UPDATE items SET secret = 's2' WHERE id = 2")
    conn.execute("DELETE FROM items WHERE id IN (1, 2)")
    items.revert(txids=[last_txid(conn)])
    conn.execute("UPDATE items SET secret = 's' || id WHERE secret = 'unknown'")
    assert_same_rows(conn, "items", before)

    conn.execute("TRUNCATE items")
    items.revert(txids=[last_txid(conn)])
    conn.execute("UPDATE items SET secret = 's' || id")
    assert_same_rows(conn, "items", before)
    # The identity sequence was not consumed by the re-inserts.
    conn.execute("INSERT INTO items (name) VALUES ('next')")
    assert rows(conn, "SELECT max(id) FROM items") == [(5,)]


def change_count_id(conn: Conn) -> int:
    """The id of the last recorded change."""
    row = conn.execute("SELECT max(id) FROM audit.change").fetchone()
    assert row is not None
    return int(row[0])


def test_key_change_undone_and_recorded_as_a_revert(audit: Audit) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE codes (code text PRIMARY KEY, label text UNIQUE)")
    conn.execute("INSERT INTO codes VALUES ('a', 'first'), ('b', 'second')")
    audit.enable("codes")
    before = snapshot(conn, "codes", "before")
    with audit.actor("mallory"):
        conn.execute("UPDATE codes SET code = 'z' WHERE code = 'a'")
    txid = last_txid(conn)
    result = audit.revert(txids=[txid], by="dba on call")
    assert_same_rows(conn, "codes", before)
    assert sorted((a["action"], a["rows"]) for a in result.applied) == [
        ("DELETE", 1),
        ("INSERT", 1),
    ]
    # The revert is captured like any change, labelled, and names what it reverted.
    undo = list(audit.history(txid=result.txid))
    assert {(c["op"], c["pk"]["code"]) for c in undo} == {("DELETE", "z"), ("INSERT", "a")}
    assert {c["actor"] for c in undo} == {"dba on call"}
    context = undo[0]["context"]["revert"]
    assert context["selection"] == {"txids": [txid]}
    assert (context["changes"], context["transactions"], context["txids"]) == (2, 1, [txid])


def test_table_and_row_back_to_an_instant(items: Audit) -> None:
    conn = items.conn
    conn.execute("UPDATE items SET qty = qty + 10")
    t = now(conn)
    at_t = snapshot(conn, "items", "at_t")
    conn.execute("UPDATE items SET qty = 0 WHERE id = 1")
    conn.execute("DELETE FROM items WHERE id = 3")
    conn.execute("INSERT INTO items (name) VALUES ('later')")
    conn.execute("UPDATE items SET name = 'later too' WHERE id = 2")

    items.revert(table="items", pk=1, to=t)
    assert rows(conn, "SELECT qty FROM items WHERE id = 1") == [(11,)]
    assert rows(conn, "SELECT name FROM items WHERE id = 2") == [("later too",)]

    items.revert(table="items", to=t)
    conn.execute("UPDATE items SET secret = 's3' WHERE id = 3")
    assert_same_rows(conn, "items", at_t)
    # Nothing changed since: nothing to revert.
    result = items.revert(table="items", to="now")
    assert (result.changes, result.applied, result.txid) == (0, [], None)


def test_foreign_keys_self_references_and_deferrable_cycles(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        """CREATE TABLE dept (id int PRIMARY KEY, parent int REFERENCES dept (id), head int);
           CREATE TABLE emp (id int PRIMARY KEY, dept int NOT NULL REFERENCES dept (id));
           ALTER TABLE dept ADD FOREIGN KEY (head) REFERENCES emp (id) DEFERRABLE;
           INSERT INTO dept VALUES (1, NULL, NULL), (2, 1, NULL), (3, 2, NULL);
           INSERT INTO emp VALUES (10, 1), (20, 2), (30, 3);
           UPDATE dept SET head = id * 10;"""
    )
    audit.enable("dept")
    audit.enable("emp")
    before_dept, before_emp = snapshot(conn, "dept", "bd"), snapshot(conn, "emp", "be")
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("DELETE FROM emp WHERE dept IN (2, 3)")
        conn.execute("DELETE FROM dept WHERE id IN (2, 3)")  # a subtree, in one statement
    result = audit.revert(txids=[last_txid(conn)])
    assert_same_rows(conn, "dept", before_dept)
    assert_same_rows(conn, "emp", before_emp)
    # Parents re-inserted before children: dept first (emp references it).
    assert [a["table"] for a in result.applied] == ["public.dept", "public.emp"]
    assert result.txid is not None
    audit.revert(txids=[result.txid])  # and back: children deleted before parents
    assert rows(conn, "SELECT id FROM dept") == [(1,)]


def test_renamed_and_added_columns_and_partitions(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        """CREATE TABLE r (id int PRIMARY KEY, a text, b int);
           INSERT INTO r SELECT g, 'a' || g, g FROM generate_series(1, 3) g;
           CREATE TABLE pt (id int, region text, v int, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu');
           CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us');
           INSERT INTO pt SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g
             FROM generate_series(1, 6) g;"""
    )
    audit.enable("r")
    audit.enable("pt")
    before_r = rows(conn, "SELECT * FROM r ORDER BY 1")
    before_pt = snapshot(conn, "pt", "before_pt")
    with conn.transaction():
        conn.execute("UPDATE r SET a = 'changed' WHERE id = 1")
        conn.execute("DELETE FROM r WHERE id = 2")
        conn.execute("UPDATE pt SET v = -v WHERE id <= 4")
        conn.execute("DELETE FROM pt_us WHERE id = 5")  # straight into a partition
        conn.execute("INSERT INTO pt VALUES (7, 'eu', 7)")
    txid = last_txid(conn)
    conn.execute("ALTER TABLE r RENAME COLUMN a TO alpha")
    conn.execute("ALTER TABLE r RENAME COLUMN id TO rid")
    conn.execute("ALTER TABLE r ADD COLUMN c int DEFAULT 7")
    conn.execute("UPDATE r SET b = 30 WHERE rid = 3")  # captured under the new names
    audit.revert(txids=[txid])
    # Images recorded under the old names land in today's columns; a re-inserted row gets the
    # default of the column added since.
    assert rows(conn, "SELECT rid, alpha, b, c FROM r ORDER BY 1") == [
        (1, "a1", 1, 7),
        (2, "a2", 2, 7),
        (3, "a3", 30, 7),
    ]
    assert [r[:3] for r in before_r] == [(1, "a1", 1), (2, "a2", 2), (3, "a3", 3)]
    assert_same_rows(conn, "pt", before_pt)
    # A later change of a row under its renamed key is found: a conflict.
    conn.execute("UPDATE r SET alpha = 'again' WHERE rid = 1")
    with pytest.raises(RevertConflict) as caught:
        audit.revert(txids=[txid])
    assert {"rid": 1} in [c["pk"] for c in caught.value.conflicts]


def test_cli_change_ids_and_progress_bar(attacked: tuple[Audit, int, str, str], dsn: str) -> None:
    from pgaudit_tool.cli import _progress_bar

    audit, txid, _, _ = attacked
    first, second = (c["id"] for c in list(audit.history(txid=txid))[:2])
    result = invoke(dsn, "revert", "--change", str(first), str(second), "--yes", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["selection"] == {"changes": [first, second]}
    assert report["applied"] == [{"table": "public.acct", "action": "UPDATE", "rows": 2}]
    update = _progress_bar()  # drawn only on a terminal; here: it must just work
    for done, label in ((0, "UPDATE public.acct"), (1500, "INSERT public.acct"), (3000, "done")):
        update(done, 3000, label)


def test_a_failing_statement_rolls_everything_back(audit: Audit, dsn: str) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, v int)")
    conn.execute("CREATE TABLE c (id int PRIMARY KEY, p int REFERENCES p)")
    audit.enable("p")
    audit.enable("c")
    with conn.transaction():
        conn.execute("INSERT INTO p VALUES (1, 1), (2, 2)")
        conn.execute("UPDATE p SET v = 0")
    txid = last_txid(conn)
    conn.execute("INSERT INTO c VALUES (10, 2)")  # later work in another table needs p 2
    changes = change_count(conn)
    with pytest.raises(DatabaseError, match="the revert failed and changed nothing: .*foreign key"):
        audit.revert(txids=[txid])
    assert rows(conn, "SELECT * FROM p ORDER BY id") == [(1, 0), (2, 0)]
    assert change_count(conn) == changes
    failed = invoke(dsn, "revert", "--txid", str(txid), "--yes")
    assert failed.exit_code == 1 and failed.stdout == ""
    assert failed.stderr.splitlines()[-1].startswith("error: the revert failed and changed nothing")


def test_truncate_without_content_is_refused(audit: Audit) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    audit.enable("t", capture_truncate=False)
    conn.execute("TRUNCATE t")
    with pytest.raises(TableNotSuitable, match="TRUNCATE of public.t .* recorded without its rows"):
        audit.revert(txids=[last_txid(conn)])


# --------------------------------------------------------------------------- an incident


@dataclass
class Incident:
    audit: Audit
    since: datetime
    attacker: str
    legit: str
    pre: dict[str, str] = field(default_factory=dict)  # pre-attack snapshots
    post: dict[str, str] = field(default_factory=dict)  # after the attack and the legit work


LEGIT_WORK = [
    "UPDATE customers SET name = name || ' (verified)' WHERE id BETWEEN 250 AND 260",
    "UPDATE customers SET name = 'renamed by support' WHERE id = 5",  # attacked in tx 1
    "INSERT INTO orders VALUES (5000, 270, 12.50, 'new')",
    "UPDATE orders SET status = 'shipped' WHERE customer_id = 281",
]


@pytest.fixture
def incident(audit: Audit, pg_server: PgServer, make_role: Callable[..., str]) -> Incident:
    conn = audit.conn
    conn.execute(
        """CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, balance numeric(12, 2));
           CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                                amount numeric(12, 2), status text);
           INSERT INTO customers SELECT g, 'customer ' || g, g * 10 FROM generate_series(1, 300) g;
           INSERT INTO orders SELECT g, (g + 1) / 2, g, 'open' FROM generate_series(1, 600) g;"""
    )
    audit.enable("customers")
    audit.enable("orders")
    attacker, legit = make_role("attacker"), make_role("support")
    for role in (attacker, legit):
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO {}").format(
                sql.Identifier(role)
            )
        )
    found = Incident(audit, now(conn), attacker, legit)
    found.pre = {t: snapshot(conn, t, f"pre_{t}") for t in ("customers", "orders")}
    db = conn.info.dbname
    with (
        psycopg.connect(pg_server.dsn_for(db, user=attacker), autocommit=True) as bad,
        psycopg.connect(pg_server.dsn_for(db, user=legit), autocommit=True) as good,
    ):
        bad.execute("UPDATE customers SET balance = 0 WHERE id <= 200")
        good.execute(LEGIT_WORK[0])
        good.execute(LEGIT_WORK[1])
        with bad.transaction():
            bad.execute("DELETE FROM orders WHERE customer_id BETWEEN 201 AND 210")
            bad.execute("DELETE FROM customers WHERE id BETWEEN 201 AND 210")
        with bad.transaction():
            bad.execute(
                "INSERT INTO customers SELECT g, 'fake', 1e6 FROM generate_series(1001, 1005) g"
            )
            bad.execute(
                "INSERT INTO orders SELECT g, g - 1000, 1, 'paid' FROM generate_series(1001, 1005) g"
            )
            bad.execute("UPDATE orders SET amount = amount * 10 WHERE id % 7 = 0")
        good.execute(LEGIT_WORK[2])
        good.execute(LEGIT_WORK[3])
    found.post = {t: snapshot(conn, t, f"post_{t}") for t in ("customers", "orders")}
    return found


def expected_state(conn: Conn, name: str, pre: dict[str, str], row5: str) -> dict[str, str]:
    """The pre-attack state with the legit work replayed; customer 5 taken from ``row5``."""
    tables = {}
    for table, snap in pre.items():
        tables[table] = snapshot(conn, snap, f"{name}_{table}")
    for stmt in LEGIT_WORK:
        for table in ("customers", "orders"):
            stmt = stmt.replace(f" {table} ", f" {tables[table]} ")
        conn.execute(stmt)
    conn.execute(f"DELETE FROM {tables['customers']} WHERE id = 5")
    conn.execute(f"INSERT INTO {tables['customers']} SELECT * FROM {row5} WHERE id = 5")
    return tables


def assert_state(conn: Conn, expected: dict[str, str]) -> None:
    for table, want in expected.items():
        assert_same_rows(conn, table, want)


def test_incident_abort_skip_undo_force(incident: Incident) -> None:
    audit, conn = incident.audit, incident.audit.conn
    select = {"db_user": incident.attacker, "since": incident.since}

    plan = audit.revert(**select, dry_run=True)  # type: ignore[arg-type]
    assert {(s["table"], s["action"]): s["rows"] for s in plan.summary} == {
        ("public.customers", "DELETE"): 5,
        ("public.customers", "UPDATE"): 199,
        ("public.customers", "INSERT"): 10,
        ("public.customers", "CONFLICT"): 1,
        ("public.orders", "DELETE"): 5,
        ("public.orders", "UPDATE"): 82,
        ("public.orders", "INSERT"): 20,
    }
    assert_state(conn, incident.post)

    # abort: exactly the one row the support user changed later; nothing changed.
    before = change_count(conn)
    with pytest.raises(RevertConflict) as caught:
        audit.revert(**select)  # type: ignore[arg-type]
    [conflict] = caught.value.conflicts
    assert isinstance(conflict["later"], list) and isinstance(conflict["live"], dict)
    assert (conflict["table"], conflict["pk"], conflict["reason"], conflict["columns"]) == (
        "public.customers",
        {"id": 5},
        "changed later",
        ["name"],
    )
    [later] = conflict["later"]
    assert (later["db_user"], later["op"]) == (incident.legit, "UPDATE")
    assert conflict["live"]["name"] == "renamed by support" and conflict["revert"] == "left as is"
    assert_state(conn, incident.post)
    assert change_count(conn) == before

    # skip: the pre-attack state, except the legit work and the conflicting row (left as is).
    skipped = audit.revert(**select, on_conflict="skip")  # type: ignore[arg-type]
    assert [c["pk"] for c in skipped.conflicts] == [{"id": 5}]
    assert_state(conn, expected_state(conn, "skip", incident.pre, incident.post["customers"]))
    labels = {(c["actor"], c["db_user"]) for c in audit.history(txid=skipped.txid)}
    assert labels == {(DEFAULT_ACTOR, conn.info.user)}

    # Reverting the revert restores the state after the attack.
    audit.revert(txids=[skipped.txid])  # type: ignore[list-item]
    assert_state(conn, incident.post)

    # force: that row goes back to its pre-attack state too (the support change is lost).
    forced = audit.revert(**select, on_conflict="force")  # type: ignore[arg-type]
    assert {"id": 5} in [c["pk"] for c in forced.conflicts]
    assert_state(conn, expected_state(conn, "force", incident.pre, incident.pre["customers"]))


def test_incident_from_the_cli(incident: Incident, dsn: str) -> None:
    conn = incident.audit.conn
    select = ["--db-user", incident.attacker, "--since", incident.since.isoformat()]

    refused = invoke(dsn, "revert", *select)
    assert refused.exit_code == EXIT_CONFLICT, refused.stderr
    assert "public.customers" in refused.stdout and '{"id":5}' in refused.stdout
    assert refused.stderr.startswith("error: 1 row(s) were changed after the changes to revert")
    assert "--on-conflict skip" in refused.stderr

    no_tty = invoke(dsn, "revert", *select, "--on-conflict", "skip")
    assert no_tty.exit_code == EXIT_BAD_INPUT
    assert "refusing to change anything without confirmation" in no_tty.stderr
    assert_state(conn, incident.post)

    done = invoke(dsn, "revert", *select, "--on-conflict", "skip", "--yes", "--format", "json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert sum(a["rows"] for a in report["applied"]) == 321
    assert [c["pk"] for c in report["conflicts"]] == [{"id": 5}]
    assert f"revert --txid {report['txid']}" in done.stderr
    assert_state(conn, expected_state(conn, "cli", incident.pre, incident.post["customers"]))


# --------------------------------------------------------------------------- the script


@pytest.fixture
def attacked(audit: Audit) -> tuple[Audit, int, str, str]:
    """A small attack: (audit, its txid, snapshot before, snapshot after)."""
    conn = audit.conn
    conn.execute("CREATE TABLE acct (id int PRIMARY KEY, owner text, balance int)")
    conn.execute("INSERT INTO acct SELECT g, 'o' || g, 100 FROM generate_series(1, 20) g")
    audit.enable("acct")
    before = snapshot(conn, "acct", "before")
    with conn.transaction():
        conn.execute("UPDATE acct SET balance = 0 WHERE id <= 10")
        conn.execute("DELETE FROM acct WHERE id > 18")
        conn.execute("INSERT INTO acct VALUES (99, 'mallory', 1000000)")
    txid = last_txid(conn)
    return audit, txid, before, snapshot(conn, "acct", "after")


def test_dry_run_script_does_what_the_revert_does(
    attacked: tuple[Audit, int, str, str], dsn: str
) -> None:
    audit, txid, before, after = attacked
    conn = audit.conn
    changes = change_count(conn)
    shown = invoke(dsn, "revert", "--txid", str(txid), "--dry-run")
    assert shown.exit_code == 0, shown.stderr
    script = shown.stdout
    assert "dry run: nothing was changed" in shown.stderr
    assert_same_rows(conn, "acct", after)
    assert change_count(conn) == changes
    assert script.startswith("-- pgaudit_tool revert script")
    assert any(line.startswith("-- public.acct | UPDATE") for line in script.splitlines())
    assert "\nBEGIN;\n" in script and script.endswith("COMMIT;\n")

    # Run as printed (psycopg, simple protocol, one script): the revert, labelled as such.
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(script)
    assert_same_rows(conn, "acct", before)
    by_script = last_txid(conn)
    assert {c["actor"] for c in audit.history(txid=by_script)} == {DEFAULT_ACTOR}

    # The real revert does the same (after undoing the script's revert: every row was then
    # changed later and back, a conflict that only force overrides).
    audit.revert(txids=[by_script])
    assert_same_rows(conn, "acct", after)
    with pytest.raises(RevertConflict, match="13 row"):
        audit.revert(txids=[txid])
    result = audit.revert(txids=[txid], on_conflict="force")
    assert {c["reason"] for c in result.conflicts} == {"changed later and back"}
    assert_same_rows(conn, "acct", before)
    assert sorted(c["pk"]["id"] for c in audit.history(txid=result.txid)) == sorted(
        c["pk"]["id"] for c in audit.history(txid=by_script)
    )

    psql = shutil.which("psql")
    if psql:  # and through psql, from the file the user would save
        audit.revert(txids=[result.txid])  # type: ignore[list-item]
        assert_same_rows(conn, "acct", after)
        # The abort script refuses in psql too (the guard statement), changing nothing...
        refused = run_psql(psql, dsn, script)
        assert refused.returncode == 3 and "13 row(s) were changed after" in refused.stderr
        assert_same_rows(conn, "acct", after)
        # ... and the force script, printed by another dry run, reverts.
        forced = invoke(dsn, "revert", "--txid", str(txid), "--dry-run", "--on-conflict", "force")
        ran = run_psql(psql, dsn, forced.stdout)
        assert ran.returncode == 0, ran.stderr
        assert_same_rows(conn, "acct", before)


def run_psql(psql: str, dsn: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )


def test_concurrent_change_after_the_plan_changes_nothing(
    attacked: tuple[Audit, int, str, str], dsn: str
) -> None:
    audit, txid, _, after = attacked
    changes = change_count(audit.conn)

    def meanwhile(_plan: Any) -> bool:
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("UPDATE acct SET owner = 'busy' WHERE id = 3")
        return True

    with pytest.raises(RevertConflict, match="rows changed while the revert ran"):
        audit.revert(txids=[txid], confirm=meanwhile)
    audit.conn.execute("UPDATE acct SET owner = 'o3' WHERE id = 3")
    assert_same_rows(audit.conn, "acct", after)
    assert change_count(audit.conn) == changes + 2  # the two updates of row 3, no revert


def test_a_locked_row_makes_the_revert_give_up_after_the_lock_timeout(
    attacked: tuple[Audit, int, str, str], dsn: str
) -> None:
    audit, txid, _, after = attacked
    changes = change_count(audit.conn)
    with psycopg.connect(dsn) as holder, Audit.connect(dsn, lock_timeout="200ms") as reverter:
        holder.execute("SELECT * FROM acct WHERE id = 3 FOR UPDATE")  # held until the end
        with pytest.raises(LockTimeout, match="nothing was changed"):
            reverter.revert(txids=[txid])
    assert_same_rows(audit.conn, "acct", after)
    assert change_count(audit.conn) == changes


def test_progress_and_declined_confirmation(attacked: tuple[Audit, int, str, str]) -> None:
    audit, txid, before, after = attacked
    declined = audit.revert(txids=[txid], confirm=lambda plan: False)
    assert (declined.applied, declined.txid) == ([], None)
    assert_same_rows(audit.conn, "acct", after)
    seen: list[tuple[int, int, str]] = []
    audit.revert(
        txids=[txid], progress=lambda done, total, label: seen.append((done, total, label))
    )
    assert seen[-1] == (13, 13, "done")
    planning = [s for s in seen if s[2].startswith("planning")]
    assert [s[0] for s in planning] == list(range(len(planning)))  # counts that move
    assert planning[-1] == (len(planning) - 1, len(planning) - 1, "planning: done")
    assert [s[2] for s in seen if not s[2].startswith("planning")] == [
        "DELETE public.acct",
        "UPDATE public.acct",
        "INSERT public.acct",
        "done",
    ]
    assert_same_rows(audit.conn, "acct", before)


def test_confirmation_on_a_terminal(attacked: tuple[Audit, int, str, str], dsn: str) -> None:
    audit, txid, before, _ = attacked
    script = Path(sys.executable).with_name("pgaudit-tool")
    master, slave = os.openpty()
    try:
        os.write(master, b"y\n")  # the answer waits in the terminal until the prompt reads it
        proc = subprocess.run(
            [str(script), "--dsn", dsn, "revert", "--txid", str(txid)],
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, proc.stderr
    assert "Revert 13 row(s)? [y/N]" in proc.stderr
    assert_same_rows(audit.conn, "acct", before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--change", "999999"], "no recorded change has id 999999"),
        (["--txid", "1"], "no audited change belongs to transaction 1"),
        ([], "nothing selected"),
        (["--since", "1 hour ago"], "since and until select the changes of an actor"),
        (["--actor", "nobody"], "needs a start instant (since)"),
        (["--actor", "nobody", "--since", "1 hour ago"], "no audited transaction of actor nobody"),
        (["--pk", "1"], "to and pk need a table"),
        (["--table", "acct"], "give to"),
        (["--table", "nope", "--to", "now"], "table nope does not exist"),
        (["--change", "1", "--txid", "2"], "not by changes and txids"),
        (["--txid", "1", "--to", "now"], "to and pk go with a table"),
        (["12", "13"], "IDs need --change or --txid"),
        (["--actor", "a", "--since", "now", "--until", "1 hour ago"], "is before its start"),
        (["--actor", "a", "--since", "not a time"], "is not a time"),
    ],
)
def test_bad_selections(
    attacked: tuple[Audit, int, str, str], dsn: str, args: list[str], message: str
) -> None:
    result = invoke(dsn, "revert", *args)
    assert result.exit_code == EXIT_BAD_INPUT, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_same_rows(attacked[0].conn, "acct", attacked[3])


def test_a_reviewer_with_write_rights_can_revert(
    attacked: tuple[Audit, int, str, str], pg_server: PgServer, make_role: Callable[..., str]
) -> None:
    audit, txid, before, after = attacked
    conn = audit.conn
    dba, outsider = make_role("dba"), make_role("outsider")
    for role in (dba, outsider):
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON acct TO {}").format(
                sql.Identifier(role)
            )
        )
    conn.execute(sql.SQL("GRANT pgaudit_reader TO {}").format(sql.Identifier(dba)))
    db = conn.info.dbname
    # (revert.run directly: Audit's schema-version check needs the version table, which
    # pgaudit_reader cannot read.)
    with (
        psycopg.connect(pg_server.dsn_for(db, user=outsider), autocommit=True) as denied,
        pytest.raises(PermissionDenied, match="permission denied"),
    ):
        run_revert(denied, RevertSelection(txids=(txid,)))
    assert_same_rows(conn, "acct", after)
    with psycopg.connect(pg_server.dsn_for(db, user=dba), autocommit=True) as allowed:
        result = run_revert(allowed, RevertSelection(txids=(txid,)))
    assert_same_rows(conn, "acct", before)
    assert {(c["db_user"], c["role"]) for c in audit.history(txid=result.txid)} == {(dba, dba)}


def test_sql_api(attacked: tuple[Audit, int, str, str]) -> None:
    audit, txid, before, after = attacked
    conn = audit.conn
    selection = Jsonb({"txids": [txid]})
    plan = rows(
        conn,
        sql.SQL(
            "SELECT action, count(*) FROM audit.revert_plan(audit.revert_selection({}))"
            " GROUP BY 1 ORDER BY 1"
        ).format(sql.Literal(selection)),
    )
    assert plan == [("DELETE", 1), ("INSERT", 2), ("UPDATE", 10)]
    assert_same_rows(conn, "acct", after)
    done = conn.execute("SELECT * FROM audit.revert(%s)", [selection]).fetchall()
    assert done == [
        ("public.acct", "DELETE", 1),
        ("public.acct", "UPDATE", 10),
        ("public.acct", "INSERT", 2),
    ]
    assert_same_rows(conn, "acct", before)
    with pytest.raises(psycopg.Error) as caught:  # every row now changed later, by the revert
        conn.execute("SELECT * FROM audit.revert(%s)", [selection])
    assert caught.value.diag.sqlstate == "RV001"
    assert_same_rows(conn, "acct", before)


def test_api_refuses_a_revert_inside_a_transaction(attacked: tuple[Audit, int, str, str]) -> None:
    audit, txid, _, _ = attacked
    with audit.conn.transaction(), pytest.raises(InvalidInput, match="transaction of its own"):
        audit.revert(txids=[txid])
    with pytest.raises(InvalidInput, match="unknown conflict policy"):
        audit.revert(txids=[txid], on_conflict="maybe")


# --------------------------------------------------------------------------- property test

KEYS = 8
_row = st.tuples(st.integers(-50, 50), st.sampled_from(["x", "y", "zz", None]))
_op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 1), st.integers(1, KEYS), _row),
    st.tuples(st.just("update"), st.integers(0, 1), st.integers(1, KEYS), _row),
    st.tuples(st.just("delete"), st.integers(0, 1), st.integers(1, KEYS), st.none()),
    st.tuples(st.just("move"), st.integers(0, 1), st.integers(1, KEYS), st.integers(1, KEYS)),
)
_workload = st.lists(st.lists(_op, min_size=1, max_size=3), min_size=2, max_size=8)


@dataclass
class Workload:
    """The statements each transaction ran (those that took effect), with its txid."""

    tables: list[str]
    model: list[dict[int, tuple[Any, ...]]]
    done: list[tuple[int, list[tuple[int, str, list[Any]]]]] = field(default_factory=list)

    def effective(self, op: tuple[Any, ...]) -> tuple[int, str, list[Any]] | None:
        """The statement of an operation, if it changes something now (and the model)."""
        kind, t, key, arg = op
        rows = self.model[t]
        if kind == "insert" and key not in rows:
            rows[key] = arg
            return t, "INSERT INTO {} VALUES (%s, %s, %s)", [key, *arg]
        if kind == "update" and key in rows:
            rows[key] = arg
            return t, "UPDATE {} SET v = %s, w = %s WHERE id = %s", [*arg, key]
        if kind == "delete" and key in rows:
            del rows[key]
            return t, "DELETE FROM {} WHERE id = %s", [key]
        if kind == "move" and key in rows and arg not in rows:
            rows[arg] = rows.pop(key)
            return t, "UPDATE {} SET id = %s WHERE id = %s", [arg, key]
        return None


def _run(conn: Conn, table: str, stmt: str, params: list[Any]) -> None:
    conn.execute(sql.SQL(stmt).format(sql.Identifier(table)), params)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(workload=_workload, picks=st.sets(st.integers(0, 7), min_size=1, max_size=4))
def test_revert_equals_replay_without_the_reverted_transactions(
    audit: Audit, workload: list[list[tuple[Any, ...]]], picks: set[int]
) -> None:
    conn = audit.conn
    name = f"p{uuid.uuid4().hex[:8]}"
    tables = [f"{name}_a", f"{name}_b"]
    work = Workload(tables, [{}, {}])
    for n, table in enumerate(tables):
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int, w text)").format(
                sql.Identifier(table)
            )
        )
        for key in range(1, KEYS + 1, 2):
            work.model[n][key] = (key, "init")
            _run(conn, table, "INSERT INTO {} VALUES (%s, %s, %s)", [key, key, "init"])
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
                sql.Identifier(f"{table}_init"), sql.Identifier(table)
            )
        )
        audit.enable(table)
    for ops in workload:
        with conn.transaction():
            statements = [s for s in map(work.effective, ops) if s is not None]
            for t, stmt, params in statements:
                _run(conn, tables[t], stmt, params)
            if statements:
                row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
                assert row is not None
                work.done.append((int(row[0]), statements))
    if not work.done:
        event("no transaction changed anything")
        return
    chosen = sorted({work.done[i % len(work.done)][0] for i in picks})
    for table in tables:
        snapshot(conn, f'"{table}"', f'"{table}_final"')
    try:
        result = audit.revert(txids=chosen)
    except RevertConflict as conflict:
        event("conflict: abort changed nothing")
        assert conflict.conflicts
        for table in tables:  # nothing changed
            assert_same_rows(conn, f'"{table}"', f'"{table}_final"')
        return
    event("reverted: equal to the replay")
    # Replay the kept transactions on copies of the initial tables.
    for table in tables:
        snapshot(conn, f'"{table}_init"', f'"{table}_replay"')
    for txid, statements in work.done:
        if txid not in chosen:
            for t, stmt, params in statements:
                _run(conn, f"{tables[t]}_replay", stmt, params)
    for table in tables:
        assert_same_rows(conn, f'"{table}"', f'"{table}_replay"')
    # And the revert of the revert gives the final state back.
    if result.txid is not None:
        audit.revert(txids=[result.txid])
        for table in tables:
            assert_same_rows(conn, f'"{table}"', f'"{table}_final"')


def test_bench_revert_measures_and_cleans_up(audit: Audit, dsn: str) -> None:
    from pgaudit_tool.bench.revert_cost import bench_revert

    changes = change_count(audit.conn)
    result = bench_revert(dsn, rows=300)
    assert result["reverted_rows"] == 300 and result["ratio"] > 0
    assert set(result) == {"rows", "update_ms", "revert_ms", "ratio", "reverted_rows"}
    assert (
        rows(
            audit.conn,
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgaudit_revert_bench%'",
        )
        == []
    )
    assert rows(audit.conn, "SELECT count(*) FROM audit.tracked_table") == [(0,)]
    assert change_count(audit.conn) == changes


def test_hints_speak_sql_and_python_and_the_cli_shows_its_flags(
    attacked: tuple[Audit, int, str, str], dsn: str
) -> None:
    audit = attacked[0]
    with pytest.raises(InvalidInput) as caught:
        audit.revert(since="1 hour ago")
    assert (
        caught.value.hint
        == 'Add "actor" or "db_user". To put a whole table back: "table" with "to".'
    )
    result = invoke(dsn, "revert", "--since", "1 hour ago")
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.splitlines()[-1] == (
        "hint: Add --actor NAME or --db-user ROLE. To put a whole table back: --table with --to TIME."
    )
