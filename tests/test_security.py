"""Security and integrity: the audited cannot edit or silence the log, and tampering is detected."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from tests.conftest import PgServer

Conn = psycopg.Connection[Any]


def log_fingerprint(conn: Conn) -> tuple[Any, ...]:
    """Everything in the log, to prove an attack changed nothing."""
    row = conn.execute(
        "SELECT (SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY id), '')) FROM audit.change c),"
        " (SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY txid), '')) FROM audit.transaction x),"
        " (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY relid), '')) FROM audit.tracked_table t)"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def app(audit: Audit, pg_server: PgServer, make_role: Callable[..., str]) -> tuple[Audit, Conn]:
    """An audited table owned by an ordinary application role, and that role's connection."""
    role = make_role("app")
    conn = audit.conn
    conn.execute(sql.SQL("CREATE SCHEMA shop AUTHORIZATION {}").format(sql.Identifier(role)))
    app_conn = psycopg.connect(pg_server.dsn_for(conn.info.dbname, user=role), autocommit=True)
    app_conn.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, amount int)")
    app_conn.execute("INSERT INTO shop.orders VALUES (1, 10)")
    audit.enable("shop.orders")
    app_conn.execute("UPDATE shop.orders SET amount = 11")
    return audit, app_conn


ATTACKS = [
    "INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, statement_at, clock_at)"
    " VALUES ('1', 1, 's', 't', 'I', 'r', now(), now())",
    "UPDATE audit.change SET new = '{}'",
    "DELETE FROM audit.change",
    "TRUNCATE audit.change",
    "DELETE FROM audit.transaction",
    "UPDATE audit.tracked_table SET enabled = false",
    "SELECT audit._rewrite_after_ddl('shop.orders')",
    "SELECT audit.disable('shop.orders')",
    "ALTER TABLE shop.orders DISABLE TRIGGER pgaudit_update",
    "ALTER TABLE shop.orders DISABLE TRIGGER ALL",
    "ALTER TABLE shop.orders ENABLE TRIGGER pgaudit_insert",  # no longer ALWAYS
    "DROP TRIGGER pgaudit_delete ON shop.orders",
    "DROP TABLE shop.orders",
    "SELECT audit.seal()",
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.split(" (")[0][:50] for a in ATTACKS])
def test_application_role_cannot_edit_or_silence_the_log(
    app: tuple[Audit, Conn], attack: str
) -> None:
    audit, app_conn = app
    before = log_fingerprint(audit.conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(attack)
    assert log_fingerprint(audit.conn) == before
    # Capture still works, ENABLE ALWAYS, and the change is attributed to the app role.
    app_conn.execute("UPDATE shop.orders SET amount = amount + 1")
    assert audit.status()[0]["state"] == "ok"
    last = list(audit.history("shop.orders"))[-1]
    assert last["new"]["amount"] == 12 and last["role"] == app_conn.info.user


def test_settings_cannot_switch_capture_off(app: tuple[Audit, Conn]) -> None:
    audit, app_conn = app
    count = len(list(audit.history()))
    with app_conn.transaction():
        # Forging the acting role through settings, before the statement and inside it (the
        # settings that revision 0002 read back after the statement ran): the role recorded is
        # the session's, which only SET ROLE changes.
        app_conn.execute("SELECT set_config('pgaudit.role_1', 'someone_else', true)")
        app_conn.execute(
            "UPDATE shop.orders SET amount = 100 + 0 * length("
            " set_config('pgaudit.role_0', 'someone_else', true)"
            " || set_config('pgaudit.role_1', 'someone_else', true))"
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
        app_conn.execute("SET LOCAL session_replication_role = replica")  # superuser only
    assert len(list(audit.history())) == count + 1
    assert list(audit.history())[-1]["role"] == app_conn.info.user


def test_every_function_of_the_schema_pins_its_search_path(app: tuple[Audit, Conn]) -> None:
    """Functions and operators a table owner places on a caller's search_path can match our
    calls better than pg_catalog's (tests/test_attacks.py plants them): every function of the
    schema runs with search_path pinned but the per-row ones written for it, and capture
    functions (generated, every name qualified: test_search_path_hijack_fails)."""
    audit, _ = app
    unpinned = audit.conn.execute(
        "SELECT p.proname FROM pg_proc AS p WHERE p.pronamespace = 'audit'::regnamespace"
        " AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS c(s) WHERE c.s LIKE 'search\\_path=%%')"
        " AND p.proname NOT IN (SELECT x.capture_function FROM audit.tracked_table AS x)"
        " ORDER BY 1"
    ).fetchall()
    names = [n for (n,) in unpinned]
    markers = [n for n in names if n.startswith("_mark_commit_")]
    assert markers and sorted(set(names) - set(markers)) == [
        "_context",
        "_rename_keys",
        "changed_columns",
    ]


def test_search_path_hijack_fails(app: tuple[Audit, Conn]) -> None:
    """Objects planted where the capture code could look for them are never used."""
    audit, app_conn = app
    role = app_conn.info.user
    app_conn.execute(
        "CREATE FUNCTION shop.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{\"hijacked\": 1}'::jsonb $$;"
        "CREATE FUNCTION shop.jsonb_build_object(text, integer) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;"
        "CREATE FUNCTION shop.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;"
        "CREATE FUNCTION shop.concat(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT 'pgaudit.nothing' $$;"
        "CREATE TABLE shop.change (LIKE shop.orders)"
    )
    audit.conn.execute(
        "CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{\"hijacked\": 2}'::jsonb $$"
    )
    app_conn.execute("SET search_path = shop, public, pg_catalog")
    app_conn.execute("UPDATE shop.orders SET amount = 50")
    app_conn.execute("INSERT INTO shop.orders VALUES (2, 20)")
    rows = list(audit.history("shop.orders"))[-2:]
    assert [r["new"] for r in rows] == [{"id": 1, "amount": 50}, {"id": 2, "amount": 20}]
    assert all(r["role"] == role for r in rows)
    assert app_conn.execute("SELECT count(*) FROM shop.change").fetchone() == (0,)


def test_owner_can_still_manage(app: tuple[Audit, Conn]) -> None:
    audit, _ = app
    assert audit.disable("shop.orders") == {"shop.orders": True}
    audit.enable("shop.orders")
    audit.conn.execute("ALTER TABLE shop.orders DISABLE TRIGGER pgaudit_update")  # the owner may
    assert audit.status()[0]["state"] == "triggers not ENABLE ALWAYS"


def test_reader_role_reads_but_cannot_write(
    app: tuple[Audit, Conn], pg_server: PgServer, make_role: Callable[..., str]
) -> None:
    audit, _ = app
    reviewer = make_role("reviewer")
    audit.conn.execute(sql.SQL("GRANT pgaudit_reader TO {}").format(sql.Identifier(reviewer)))
    with psycopg.connect(
        pg_server.dsn_for(audit.conn.info.dbname, user=reviewer), autocommit=True
    ) as c:
        assert c.execute("SELECT count(*) FROM audit.history").fetchone() == (1,)
        for attack in ("DELETE FROM audit.change", "UPDATE audit.transaction SET actor = 'x'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(attack)


# --------------------------------------------------------------------------- hash chain


def tamper_cases() -> list[tuple[str, str]]:
    return [
        ("edit", "UPDATE audit.change SET new = jsonb_set(new, '{amount}', '999') WHERE id = 2"),
        ("delete", "DELETE FROM audit.change WHERE id = 2"),
        (
            "insert",
            "INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, statement_at, clock_at, pk, old, new)"
            " SELECT txid, relid, schema_name, table_name, op, role, statement_at, clock_at, pk, old, new FROM audit.change WHERE id = 1",
        ),
        (
            "reorder",
            "ALTER TABLE audit.change ALTER COLUMN id SET GENERATED BY DEFAULT;"
            " UPDATE audit.change SET id = -id WHERE id IN (1, 2);"
            " UPDATE audit.change SET id = 3 + id WHERE id < 0",
        ),
        ("edit context", "UPDATE audit.transaction SET actor = 'nobody'"),
        ("drop a block", "DELETE FROM audit.seal WHERE seq = 1"),
        ("rewrite a block", "UPDATE audit.seal SET hash = sha256(hash) WHERE seq = 1"),
    ]


@pytest.mark.parametrize(("name", "attack"), tamper_cases(), ids=[c[0] for c in tamper_cases()])
def test_verify_catches_superuser_tampering(audit: Audit, name: str, attack: str) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, amount int)")
    audit.enable("t")
    with audit.actor("alice"):
        conn.execute("INSERT INTO t VALUES (1, 1)")
    conn.execute("UPDATE t SET amount = 2")
    head = audit.checkpoint()
    assert head["seq"] == 1 and head["changes"] == 2
    conn.execute("INSERT INTO t VALUES (3, 3)")
    assert audit.checkpoint()["seq"] == 2
    assert audit.verify() == [] and audit.verify(head) == []
    conn.execute(attack)
    assert audit.verify(head), f"{name} was not detected"


def test_checkpoint_catches_a_rewritten_or_emptied_log(audit: Audit, tmp_path: Path) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    audit.enable("t")
    conn.execute("INSERT INTO t VALUES (1)")
    kept = tmp_path / "head.json"
    runner = CliRunner()
    result = runner.invoke(main, ["--dsn", conn.info.dsn, "checkpoint", "--output", str(kept)])
    assert result.exit_code == 0, result.output
    assert json.loads(kept.read_text())["seq"] == 1
    ok = runner.invoke(main, ["--dsn", conn.info.dsn, "verify", "--against", str(kept)])
    assert ok.exit_code == 0 and "intact" in ok.stderr
    # A superuser empties everything, then re-seals a consistent-looking chain from scratch.
    conn.execute("DELETE FROM audit.seal; DELETE FROM audit.change; DELETE FROM audit.transaction")
    conn.execute("INSERT INTO t VALUES (2)")
    audit.checkpoint()
    assert audit.verify() == []  # internally consistent ...
    bad = runner.invoke(
        main, ["--dsn", conn.info.dsn, "verify", "--against", str(kept), "--format", "json"]
    )
    assert bad.exit_code == 7  # ... but not the chain we kept
    assert json.loads(bad.stdout) and "NOT intact" in bad.stderr


def test_sealing_never_covers_a_running_transaction(audit: Audit, dsn: str) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    audit.enable("t")
    with psycopg.connect(dsn) as slow:
        slow.execute("INSERT INTO t VALUES (1)")  # running, not committed
        conn.execute("INSERT INTO t VALUES (2)")  # committed after it started
        head = audit.checkpoint()
        slow.commit()
    assert head.get("changes", 0) == 0  # nothing below the running transaction was sealed yet
    assert audit.checkpoint()["changes"] == 2
    assert audit.verify() == []


def test_guard_rewrites_capture_after_ddl_by_the_table_owner(app: tuple[Audit, Conn]) -> None:
    """The guard runs as the audit owner: DDL by an ordinary role owning the table still gets
    its capture function rewritten (it cannot rewrite it itself)."""
    audit, app_conn = app
    app_conn.execute("ALTER TABLE shop.orders RENAME COLUMN amount TO total")
    app_conn.execute("ALTER TABLE shop.orders ADD COLUMN note text DEFAULT 'n'")
    app_conn.execute("UPDATE shop.orders SET total = 12")
    last = audit.conn.execute("SELECT new FROM audit.change ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ({"id": 1, "total": 12, "note": "n"},)
    assert audit.conn.execute("SELECT layout_check FROM audit.tracked_table").fetchone() == (False,)
    assert [p for p in audit.doctor() if p["severity"] != "info"] == []


def test_a_partition_created_by_the_table_owner_is_captured(app: tuple[Audit, Conn]) -> None:
    """An ordinary role adding a partition to its audited table cannot open a path around
    capture: the guard gives the partition its capture triggers, ENABLE ALWAYS."""
    audit, app_conn = app
    app_conn.execute(
        "CREATE TABLE shop.events (day date, id int, PRIMARY KEY (day, id)) PARTITION BY RANGE (day)"
    )
    audit.enable("shop.events")
    app_conn.execute(
        "CREATE TABLE shop.events_2026 PARTITION OF shop.events"
        " FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
    )
    app_conn.execute("INSERT INTO shop.events_2026 VALUES ('2026-11-25', 1)")
    last = audit.conn.execute(
        "SELECT table_name, pk FROM audit.change ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert last == ("events", {"day": "2026-11-25", "id": 1})
    states = {s["table"]: s["state"] for s in audit.status()}
    assert states["shop.events"] == "ok"


# --------------------------------------------------------------------------- doctor


def test_doctor_reports_and_fixes(app: tuple[Audit, Conn]) -> None:
    audit, app_conn = app
    conn = audit.conn
    assert [p for p in audit.doctor() if p["severity"] != "info"] == []
    conn.execute("ALTER TABLE shop.orders ENABLE TRIGGER pgaudit_update")  # owner weakens a trigger
    conn.execute("ALTER TABLE shop.orders RENAME COLUMN amount TO total")
    app_conn.execute("CREATE TABLE shop.refunds (id int PRIMARY KEY)")
    conn.execute("SELECT audit.track_schema('shop')")
    conn.execute("GRANT INSERT ON audit.change TO PUBLIC")
    conn.execute("CREATE TABLE shop.keyless (v int)")
    problems = {(p["object"], p["problem"].split(":")[0]) for p in audit.doctor()}
    weakened = [p["problem"] for p in audit.doctor() if p["object"] == "shop.orders"]
    assert weakened == [
        "capture trigger pgaudit_update on shop.orders: not ENABLE ALWAYS: changes may go unrecorded"
    ]
    # The rename was followed by the guard, which rewrote capture: no drift to report.
    assert not [p for p in problems if "columns changed" in p[1]]
    assert conn.execute(
        "SELECT generated_layout @> '{2:23:total}' FROM audit.tracked_table"
        " WHERE relid = 'shop.orders'::regclass"
    ).fetchone() == (True,)
    assert ("shop.refunds", "table of an audited schema is not audited") in problems
    assert ("audit.change", "PUBLIC has INSERT on the audit log") in problems
    result = CliRunner().invoke(main, ["--dsn", conn.info.dsn, "doctor", "--fix", "--dry-run"])
    assert result.exit_code == 0 and "REVOKE INSERT ON audit.change FROM PUBLIC;" in result.stdout
    refused = CliRunner().invoke(main, ["--dsn", conn.info.dsn, "doctor", "--fix"])
    assert refused.exit_code == 2 and "--yes" in refused.stderr  # no terminal, no --yes
    conn.execute("DROP TABLE shop.keyless")
    fixed = CliRunner().invoke(main, ["--dsn", conn.info.dsn, "doctor", "--fix", "--yes"])
    assert fixed.exit_code == 0, fixed.output
    assert [p for p in audit.doctor() if p["severity"] != "info"] == []


def test_doctor_sees_a_broken_chain(audit: Audit) -> None:
    conn = audit.conn
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    audit.enable("t")
    conn.execute("INSERT INTO t VALUES (1)")
    audit.checkpoint()
    conn.execute("UPDATE audit.change SET role = 'ghost'")
    result = CliRunner().invoke(main, ["--dsn", conn.info.dsn, "doctor", "--format", "json"])
    assert result.exit_code == 7
    assert any("edited" in p["problem"] for p in json.loads(result.stdout))


def test_works_without_superuser(
    pg_server: PgServer, dsn: str, conn: Conn, make_role: Callable[..., str]
) -> None:
    """A managed-service admin (no superuser, no CREATEROLE) installs, audits and verifies;
    only the guards are missing, and doctor says so."""
    admin = make_role("admin")
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(admin)
        )
    )
    with Audit.connect(pg_server.dsn_for(conn.info.dbname, user=admin)) as audit:
        audit.install()
        audit.conn.execute("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, v text)")
        audit.enable("app.t")
        with audit.actor("carol"):
            audit.conn.execute("INSERT INTO app.t VALUES (1, 'x')")
        assert [(c["op"], c["actor"], c["db_user"]) for c in audit.history("app.t")] == [
            ("INSERT", "carol", admin)
        ]
        assert audit.checkpoint()["changes"] == 1 and audit.verify() == []
        # (Whether track_commit_timestamp is on depends on the server: not judged here.)
        assert [
            (p["severity"], p["object"])
            for p in audit.doctor()
            if p["object"] != "track_commit_timestamp"
        ] == [("info", "event triggers")]
        owner = audit.conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'audit'"
        ).fetchone()
        assert owner == (admin,)
    assert conn.execute(
        "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgaudit%'"
    ).fetchone() == (0,)
