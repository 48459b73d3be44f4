"""Schema upgrades and the two kinds of capture function.

A database installed by an earlier release (revision 0001 or 0002, ``tests/released.py``), with
audited tables and history, is upgraded to the head revision: history is kept, capture functions are rewritten without the per-statement layout
check (the guard event trigger rewrites them after ALTER TABLE instead), and capture stays exact.
Without the guard, functions keep the check; doctor notices a function that relies on a guard
that is gone, and `install_guards()` / `refresh` bring either kind back.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import psycopg
import pytest

from pgaudit_tool import Audit
from pgaudit_tool.errors import LockTimeout
from pgaudit_tool.schema import head_revision
from tests.released import install_released

# The statement of the per-statement layout check, as generated into capture functions.
_CHECK = "FROM pg_catalog.pg_attribute AS a WHERE a.attrelid"


def capture_source(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute(
        "SELECT p.prosrc FROM audit.tracked_table t JOIN pg_proc p"
        " ON p.proname = t.capture_function AND p.pronamespace = 'audit'::regnamespace"
        " WHERE t.relid = %s::regclass",
        (table,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def changes(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, op, pk, old, new, role, txid::text FROM audit.change ORDER BY id"
    ).fetchall()


def layout_check(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(
        "SELECT layout_check FROM audit.tracked_table WHERE relid = %s::regclass", (table,)
    ).fetchone()
    assert row is not None
    return bool(row[0])


@pytest.fixture
def items(conn: psycopg.Connection[Any]) -> str:
    conn.execute(
        "CREATE SCHEMA shop;"
        "CREATE TABLE shop.items (id int PRIMARY KEY, name text NOT NULL, secret text)"
    )
    return "shop.items"


def test_upgrade_from_0001_keeps_history_and_drops_the_check(
    dsn: str, conn: psycopg.Connection[Any], items: str
) -> None:
    install_released(dsn, "0001")
    conn.execute("SELECT audit.enable('shop.items', '{secret}')")
    conn.execute("INSERT INTO shop.items VALUES (1, 'a', 'SENTINEL'), (2, 'b', 'SENTINEL')")
    conn.execute("UPDATE shop.items SET name = name || '!'")
    assert _CHECK in capture_source(conn, items)
    before = changes(conn)
    assert len(before) == 4

    with Audit.connect(dsn) as audit:
        result = audit.install()
        assert (result.before, result.after) == ("0001", head_revision())
        assert audit.install().changed is False

    assert changes(conn) == before  # history untouched
    tags = conn.execute(
        "SELECT evttags FROM pg_event_trigger WHERE evtname = 'pgaudit_guard_ddl'"
    ).fetchone()
    # The guard sees new partitions, and trigger and type changes too.
    assert tags == (
        ["ALTER TABLE", "CREATE TABLE", "CREATE TRIGGER", "ALTER TRIGGER", "ALTER TYPE"],
    )
    assert layout_check(conn, items) is False
    assert _CHECK not in capture_source(conn, items)

    # Capture after the upgrade, across renames the guard follows.
    conn.execute("ALTER TABLE shop.items RENAME COLUMN secret TO hidden")
    conn.execute("ALTER TABLE shop.items RENAME COLUMN id TO item_id")
    conn.execute("UPDATE shop.items SET hidden = 'SENTINEL', name = 'c' WHERE item_id = 1")
    conn.execute("DELETE FROM shop.items WHERE item_id = 2")
    after = changes(conn)[len(before) :]
    assert [(op, pk, old, new) for _, op, pk, old, new, *_ in after] == [
        ("U", {"item_id": 1}, {"item_id": 1, "name": "a!"}, {"item_id": 1, "name": "c"}),
        ("D", {"item_id": 2}, {"item_id": 2, "name": "b!"}, None),
    ]
    found = conn.execute(
        "SELECT count(*) FROM audit.change x WHERE x::text LIKE '%SENTINEL%'"
    ).fetchone()
    assert found == (0,)
    with Audit.connect(dsn) as audit:
        assert not [p for p in audit.doctor() if p["severity"] != "info"]


def test_upgrade_from_0002_drops_the_stamp_trigger(
    dsn: str, conn: psycopg.Connection[Any], items: str
) -> None:
    """Revision 0002 recorded the role a stamp trigger wrote into a setting, which the statement
    itself could overwrite; the upgrade drops those triggers and the role is the session's."""
    install_released(dsn, "0002")
    conn.execute("SELECT audit.enable('shop.items')")
    conn.execute(
        "CREATE TABLE shop.parts (k int, id int, PRIMARY KEY (k, id)) PARTITION BY LIST (k)"
    )
    conn.execute("CREATE TABLE shop.parts_1 PARTITION OF shop.parts FOR VALUES IN (1)")
    conn.execute("SELECT audit.enable('shop.parts')")
    forge = "0 * length(set_config('pgaudit.role_1', 'forged', true))"
    conn.execute(f"INSERT INTO shop.items VALUES (1 + {forge}, 'a', NULL)")
    assert changes(conn)[-1][5] == "forged"  # the hole this revision closes
    stamps = "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgaudit_stamp'"
    assert conn.execute(stamps).fetchone() == (3,)
    before = changes(conn)

    with Audit.connect(dsn) as audit:
        assert audit.install().before == "0002"
        assert not [p for p in audit.doctor() if p["severity"] != "info"]
        assert [s["state"] for s in audit.status()] == ["ok", "ok"]
    assert changes(conn) == before
    assert conn.execute(stamps).fetchone() == (0,)
    assert conn.execute("SELECT to_regprocedure('audit._stamp()')").fetchone() == (None,)
    conn.execute(f"UPDATE shop.items SET name = 'b' WHERE id = 1 + {forge}")
    conn.execute(f"INSERT INTO shop.parts_1 VALUES (1, 1 + {forge})")
    assert [c[5] for c in changes(conn)[len(before) :]] == [conn.info.user] * 2


def test_upgrade_waits_no_longer_than_the_lock_timeout(
    dsn: str, conn: psycopg.Connection[Any], items: str
) -> None:
    """The upgrade to 0003 drops a trigger on every audited table: behind a transaction that
    writes one, it gives up after lock_timeout and changes nothing."""
    install_released(dsn, "0002")
    conn.execute("SELECT audit.enable('shop.items')")
    with psycopg.connect(dsn) as holder:
        holder.execute("INSERT INTO shop.items VALUES (1, 'a', NULL)")  # open transaction
        with Audit.connect(dsn, lock_timeout="200ms") as audit:
            with pytest.raises(LockTimeout, match="nothing was changed"):
                audit.install()
            assert audit.installed_revision() == "0002"
    with Audit.connect(dsn) as audit:
        assert audit.install().before == "0002"
        assert audit.installed_revision() == head_revision()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not on PATH")
def test_the_dry_run_upgrade_script_runs_in_psql(
    dsn: str, conn: psycopg.Connection[Any], items: str
) -> None:
    """What ``install --dry-run`` prints for an older database is the upgrade a DBA can review
    and run with psql: the same result as ``install``."""
    install_released(dsn, "0002")
    conn.execute("SELECT audit.enable('shop.items')")
    conn.execute("INSERT INTO shop.items VALUES (1, 'a', NULL)")
    before = changes(conn)
    with Audit.connect(dsn) as audit:
        script = audit.install_sql()
    assert "Running upgrade 0002 -> 0003" in script and "Running upgrade 0001" not in script
    ran = subprocess.run(
        [str(shutil.which("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert changes(conn) == before
    with Audit.connect(dsn) as audit:
        assert audit.installed_revision() == head_revision()
        assert audit.install().changed is False
        assert [s["state"] for s in audit.status()] == ["ok"]
        assert not [p for p in audit.doctor() if p["severity"] != "info"]
    conn.execute("UPDATE shop.items SET name = 'b'")
    assert changes(conn)[-1][5] == conn.info.user


def test_without_the_guard_capture_checks_and_doctor_notices(
    audit: Audit, conn: psycopg.Connection[Any], items: str
) -> None:
    audit.enable(items, exclude=["secret"])
    assert layout_check(conn, items) is False

    # The guard is dropped: the function without the check relies on it.
    conn.execute("DROP EVENT TRIGGER pgaudit_guard_ddl")
    problems = [p for p in audit.doctor() if p["object"] == items]
    assert [p["severity"] for p in problems] == ["error"]
    assert "guard is missing or disabled" in problems[0]["problem"]
    audit.apply_fixes([p["fix"] for p in problems])
    assert layout_check(conn, items) is True
    assert _CHECK in capture_source(conn, items)

    # With the check, a rename is followed at run time (and only reported as a warning).
    conn.execute("ALTER TABLE shop.items RENAME COLUMN secret TO hidden")
    conn.execute("INSERT INTO shop.items VALUES (1, 'a', 'SENTINEL')")
    assert changes(conn)[-1][4] == {"id": 1, "name": "a"}
    problems = [p for p in audit.doctor() if p["object"] == items]
    assert [p["severity"] for p in problems] == ["warning"]

    # Guards back: every function is rewritten without the check, under the current names.
    assert conn.execute("SELECT audit.install_guards()").fetchone() == (True,)
    assert layout_check(conn, items) is False
    assert _CHECK not in capture_source(conn, items)
    row = conn.execute(
        "SELECT excluded_columns FROM audit.tracked_table WHERE relid = 'shop.items'::regclass"
    ).fetchone()
    assert row == (["hidden"],)
    conn.execute("UPDATE shop.items SET hidden = 'SENTINEL', name = 'b'")
    assert changes(conn)[-1][4] == {"id": 1, "name": "b"}
    assert not [p for p in audit.doctor() if p["object"] == items]


def test_a_disabled_guard_leaves_a_stale_function_that_doctor_reports(
    audit: Audit, conn: psycopg.Connection[Any], items: str
) -> None:
    audit.enable(items, exclude=["secret"])
    conn.execute("ALTER EVENT TRIGGER pgaudit_guard_ddl DISABLE")
    conn.execute("ALTER TABLE shop.items ADD COLUMN note text")
    problems = {p["problem"]: p for p in audit.doctor()}
    stale = [p for text, p in problems.items() if "capture was not rewritten" in text]
    assert [(p["severity"], p["object"]) for p in stale] == [("error", items)]
    assert any(p["fix"] == "SELECT audit.install_guards()" for p in problems.values())
    # Re-enabling the guard rewrites the stale function; doctor has nothing left to say.
    conn.execute("SELECT audit.install_guards()")
    # note came after secret was excluded: held back until the exclusions are set again.
    [held] = [p for p in audit.doctor() if p["severity"] != "info"]
    assert held["severity"] == "warning" and "column note was added after" in held["problem"]
    audit.enable(items, exclude=["secret"])
    assert not [p for p in audit.doctor() if p["severity"] != "info"]
    conn.execute("INSERT INTO shop.items VALUES (1, 'a', 'SENTINEL', 'n')")
    assert changes(conn)[-1][4] == {"id": 1, "name": "a", "note": "n"}
    assert layout_check(conn, items) is False
