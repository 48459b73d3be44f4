"""Guards in the database (issue 12): a single statement changing more rows than allowed, by a
login role not excepted, fails with SQLSTATE PGA01 and changes nothing, and leaves a trace that
survives its rollback (the blocked counter, the server log).

Through the Python API, the CLI and SQL, on real servers; attacked as the owner of a guarded
table, against a schema installed by a superuser (event triggers: attacks refused) and by an
ordinary role (no event triggers: attacks detected by doctor and guard --list).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import GuardRefused, InvalidInput, PermissionDenied, TableNotSuitable
from pgaudit_tool.guard import GUARD_COLUMNS, GUARD_SQLSTATE, LOG_PREFIX
from tests.conftest import PgServer

Conn = psycopg.Connection[Any]

ROWS = 500


# --------------------------------------------------------------------------- helpers


def count(conn: Conn, query: str, params: Any = None) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def guards(audit: Audit) -> dict[str, dict[str, Any]]:
    return {g["table"]: g for g in audit.guard_list()}


def refused(conn: Conn, statement: str) -> psycopg.Error:
    """Run ``statement``; assert a guard refused it; return the error."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    error = caught.value
    assert error.sqlstate == GUARD_SQLSTATE, f"{error.sqlstate}: {error}"
    assert str(error.diag.message_primary).startswith("pgaudit_tool guard: ")
    return error


def cli(dsn: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def cli_ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def cli_failed(result: Result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    err = result.stderr
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"
    return err


class ServerLog:
    """The lines the test server writes to its log from now on (None when it is not ours)."""

    def __init__(self, pg_server: PgServer) -> None:
        cluster = pg_server.cluster
        self.path: Path | None = None if cluster is None else Path(cluster.log_file)
        self.start = self.path.stat().st_size if self.path and self.path.exists() else 0

    def lines(self, needle: str = LOG_PREFIX) -> list[str]:
        if self.path is None:
            pytest.skip("the server log is not ours (PGAUDIT_TEST_DSN)")
        deadline = time.monotonic() + 5
        while True:
            with self.path.open("rb") as log:
                log.seek(self.start)
                text = log.read().decode("utf-8", "replace")
            found = [ln for ln in text.splitlines() if needle in ln]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


# --------------------------------------------------------------------------- fixtures


class Shop:
    """``shop.payment`` (ROWS rows) audited, owned by an application role ``app``."""

    def __init__(self, audit: Audit, app: Conn, role: str, pg_server: PgServer) -> None:
        self.audit, self.app, self.role, self.pg_server = audit, app, role, pg_server

    def rows(self, table: str = "shop.payment") -> int:
        return count(self.audit.conn, f"SELECT count(*) FROM {table}")

    def connect_as(self, role: str) -> Conn:
        return psycopg.connect(
            self.pg_server.dsn_for(self.audit.conn.info.dbname, user=role), autocommit=True
        )

    def superuser(self) -> bool:
        return (
            count(
                self.audit.conn, "SELECT rolsuper::int FROM pg_roles WHERE rolname = current_user"
            )
            == 1
        )


@pytest.fixture
def shop(audit: Audit, pg_server: PgServer, make_role: Callable[..., str]) -> Iterator[Shop]:
    role = make_role("app")
    conn = audit.conn
    conn.execute(sql.SQL("CREATE SCHEMA shop AUTHORIZATION {}").format(sql.Identifier(role)))
    app = psycopg.connect(pg_server.dsn_for(conn.info.dbname, user=role), autocommit=True)
    app.execute("CREATE TABLE shop.payment (id int PRIMARY KEY, amount int NOT NULL)")
    app.execute(f"INSERT INTO shop.payment SELECT i, i FROM generate_series(1, {ROWS}) i")
    audit.enable("shop.payment")
    try:
        yield Shop(audit, app, role, pg_server)
    finally:
        app.close()


@pytest.fixture(params=["superuser", "owner"])
def tenant(
    request: pytest.FixtureRequest,
    pg_server: PgServer,
    conn: Conn,
    make_role: Callable[..., str],
) -> Iterator[Shop]:
    """Like ``shop``, installed by a superuser (event triggers) or by an ordinary role that is a
    member of the application role, as on a managed service (no event triggers)."""
    attacker = make_role("app")
    dbname = conn.info.dbname
    conn.execute(
        sql.SQL("CREATE SCHEMA shop AUTHORIZATION {0}; GRANT CREATE ON DATABASE {1} TO {0}").format(
            sql.Identifier(attacker), sql.Identifier(dbname)
        )
    )
    if request.param == "superuser":
        admin_dsn = pg_server.dsn_for(dbname)
    else:
        admin = make_role("admin")
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {0} TO {1}; GRANT {2} TO {1}").format(
                sql.Identifier(dbname), sql.Identifier(admin), sql.Identifier(attacker)
            )
        )
        admin_dsn = pg_server.dsn_for(dbname, user=admin)
    app = psycopg.connect(pg_server.dsn_for(dbname, user=attacker), autocommit=True)
    app.execute("CREATE TABLE shop.payment (id int PRIMARY KEY, amount int NOT NULL)")
    app.execute(f"INSERT INTO shop.payment SELECT i, i FROM generate_series(1, {ROWS}) i")
    with Audit.connect(admin_dsn) as audit:
        audit.install()
        if request.param == "owner":
            app.execute(
                sql.SQL("GRANT SELECT, TRIGGER ON shop.payment TO {}").format(
                    sql.Identifier(audit.conn.info.user)
                )
            )
        audit.enable("shop.payment")
        audit.guard("shop.payment", max_rows=100, ops=["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
        try:
            yield Shop(audit, app, attacker, pg_server)
        finally:
            app.close()


# --------------------------------------------------------------------------- the guard itself


def test_a_statement_over_the_limit_fails_and_changes_nothing(shop: Shop) -> None:
    record = shop.audit.guard("shop.payment", max_rows=100)
    assert record["ops"] == ["UPDATE", "DELETE"] and record["max_rows"] == 100
    assert record["blocked"] == 0 and record["state"] == "ok"
    changes = count(shop.audit.conn, "SELECT count(*) FROM audit.change")

    error = refused(shop.app, "DELETE FROM shop.payment WHERE id <= 150")
    assert error.diag.message_primary == (
        "pgaudit_tool guard: DELETE of 150 rows of shop.payment refused"
        " (limit 100 rows per statement)"
    )
    assert "not excepted" in str(error.diag.message_detail)
    assert "changed nothing" in str(error.diag.message_detail)
    hint = str(error.diag.message_hint)
    assert "excepts (none yet)" in hint
    assert (
        "raise its limit (pgaudit-tool guard 'shop.payment' --max-rows 150 --ops UPDATE,DELETE)"
        in hint
    )
    refused(shop.app, "UPDATE shop.payment SET amount = amount + 1 WHERE id <= 101")
    assert shop.rows() == ROWS
    assert count(shop.audit.conn, "SELECT sum(amount) FROM shop.payment") == ROWS * (ROWS + 1) // 2
    assert count(shop.audit.conn, "SELECT count(*) FROM audit.change") == changes  # nothing logged

    # At the limit, and operations not guarded, go through (and are captured).
    shop.app.execute("UPDATE shop.payment SET amount = 0 WHERE id <= 100")
    shop.app.execute("DELETE FROM shop.payment WHERE id <= 100")
    shop.app.execute(
        "INSERT INTO shop.payment SELECT i, i FROM generate_series(1, 100) i"
        " UNION ALL SELECT i, i FROM generate_series(501, 600) i"
    )
    assert shop.rows() == ROWS + 100
    assert count(shop.audit.conn, "SELECT count(*) FROM audit.change") == changes + 400
    assert guards(shop.audit)["shop.payment"]["blocked"] == 2


def test_the_trace_survives_the_rollback(shop: Shop) -> None:
    log = ServerLog(shop.pg_server)
    shop.audit.guard("shop.payment", max_rows=10)
    with pytest.raises(psycopg.Error), shop.app.transaction():
        shop.app.execute("SET application_name = 'nightly-job'")
        shop.app.execute("DELETE FROM shop.payment")
    # A savepoint the writer catches: rolled back, still counted and logged.
    with shop.app.transaction():
        with pytest.raises(psycopg.Error), shop.app.transaction():
            shop.app.execute("UPDATE shop.payment SET amount = 1")
        shop.app.execute("UPDATE shop.payment SET amount = 1 WHERE id = 1")
    # Caught inside PL/pgSQL: no error reaches the log, the guard's own LOG line does.
    shop.app.execute(
        "DO $$ BEGIN DELETE FROM shop.payment WHERE id <= 20;"
        " EXCEPTION WHEN SQLSTATE 'PGA01' THEN NULL; END $$"
    )
    assert shop.rows() == ROWS
    assert guards(shop.audit)["shop.payment"]["blocked"] == 3
    lines = log.lines()
    refusals = [ln for ln in lines if "refused" in ln and "LOG:" in ln]
    assert len(refusals) == 3, lines
    assert (
        f"{LOG_PREFIX} DELETE of {ROWS} rows of shop.payment refused (limit 10 rows" in refusals[0]
    )
    assert f"login role {shop.role}, role {shop.role}, application 'nightly-job'" in refusals[0]
    assert "refusal 1 of this guard" in refusals[0]
    assert "UPDATE of 500 rows" in refusals[1] and "refusal 2 of this guard" in refusals[1]
    assert "DELETE of 20 rows" in refusals[2] and "refusal 3 of this guard" in refusals[2]


def test_excepted_roles_are_checked_on_the_login_role(
    shop: Shop, make_role: Callable[..., str]
) -> None:
    bulk = make_role("bulk")
    ops_login = make_role("ops")
    other = make_role("other")
    admin = shop.audit.conn
    # ops logs in and is a member of bulk through an intermediate role, NOINHERIT on the way.
    mid = make_role("mid", "NOINHERIT")
    admin.execute(f"GRANT {bulk} TO {mid}; GRANT {mid} TO {ops_login}")
    shop.app.execute(
        f"GRANT USAGE ON SCHEMA shop TO {ops_login}, {other};"
        f"GRANT SELECT, UPDATE, DELETE ON shop.payment TO {ops_login}, {other}"
    )
    shop.audit.guard("shop.payment", max_rows=5, except_roles=[bulk])
    log = ServerLog(shop.pg_server)
    with shop.connect_as(ops_login) as ops, shop.connect_as(other) as stranger:
        ops.execute("UPDATE shop.payment SET amount = amount + 1")
        hint = refused(stranger, "UPDATE shop.payment SET amount = amount + 1").diag.message_hint
        assert f"--max-rows {ROWS} --ops UPDATE,DELETE --except-role '{bulk}')" in str(hint)
        # SET ROLE needs membership: a stranger cannot reach the excepted role.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            stranger.execute(f"SET ROLE {bulk}")
    assert any("allowed over the limit of 5 rows" in ln and ops_login in ln for ln in log.lines())
    # A superuser is not excepted unless listed: guards stop a DBA's mistakes too.
    refused(admin, "DELETE FROM shop.payment")
    shop.audit.guard("shop.payment", max_rows=5, except_roles=[bulk, admin.info.user])
    admin.execute("UPDATE shop.payment SET amount = 0")
    assert guards(shop.audit)["shop.payment"]["except_roles"] == sorted([bulk, admin.info.user])


def test_a_security_definer_function_does_not_lend_its_exception(
    shop: Shop, make_role: Callable[..., str]
) -> None:
    """The login role is checked, not current_user: a SECURITY DEFINER function owned by an
    excepted role does not except its callers (and one owned by the attacker does not help)."""
    bulk = make_role("bulk")
    shop.app.execute(f"GRANT USAGE, CREATE ON SCHEMA shop TO {bulk}")
    shop.app.execute(f"GRANT SELECT, DELETE, UPDATE ON shop.payment TO {bulk}")
    with shop.connect_as(bulk) as owner_of_fn:
        owner_of_fn.execute(
            "CREATE FUNCTION shop.purge() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
            " SET search_path = pg_catalog AS $$ WITH d AS (DELETE FROM shop.payment RETURNING 1)"
            " SELECT count(*) FROM d $$"
        )
        owner_of_fn.execute(f"GRANT EXECUTE ON FUNCTION shop.purge() TO {shop.role}")
    shop.audit.guard("shop.payment", max_rows=10, except_roles=[bulk])
    refused(shop.app, "SELECT shop.purge()")
    assert shop.rows() == ROWS
    with shop.connect_as(bulk) as excepted:
        assert excepted.execute("SELECT shop.purge()").fetchone() == (ROWS,)
    assert shop.rows() == 0


def test_modifying_ctes_count_together_per_table(shop: Shop) -> None:
    shop.app.execute("CREATE TABLE shop.archive (LIKE shop.payment)")
    shop.audit.guard("shop.payment", max_rows=100, ops=["DELETE", "UPDATE", "INSERT"])
    # Two deleting CTEs of 60 rows each: one statement, 120 rows.
    refused(
        shop.app,
        "WITH a AS (DELETE FROM shop.payment WHERE id <= 60 RETURNING *),"
        " b AS (DELETE FROM shop.payment WHERE id > 440 RETURNING *)"
        " INSERT INTO shop.archive SELECT * FROM a UNION ALL SELECT * FROM b",
    )
    refused(
        shop.app,
        "WITH d AS (DELETE FROM shop.payment WHERE id <= 200 RETURNING *)"
        " INSERT INTO shop.archive SELECT * FROM d",
    )
    assert shop.rows() == ROWS and count(shop.audit.conn, "SELECT count(*) FROM shop.archive") == 0
    # INSERT ... ON CONFLICT DO UPDATE: the updated rows are counted as an UPDATE.
    refused(
        shop.app,
        "INSERT INTO shop.payment SELECT i, 0 FROM generate_series(1, 150) i"
        " ON CONFLICT (id) DO UPDATE SET amount = excluded.amount",
    )
    with (
        shop.app.cursor() as cur,
        pytest.raises(psycopg.Error) as caught,
        cur.copy("COPY shop.payment FROM STDIN") as copy,
    ):
        for i in range(1000, 1200):
            copy.write_row((i, i))
    assert caught.value.sqlstate == GUARD_SQLSTATE
    if shop.audit.conn.info.server_version >= 150000:
        refused(
            shop.app,
            "MERGE INTO shop.payment p USING generate_series(1, 300) AS s(i) ON p.id = s.i"
            " WHEN MATCHED THEN UPDATE SET amount = 0",
        )
    assert shop.rows() == ROWS
    assert guards(shop.audit)["shop.payment"]["blocked"] >= 4
    # Rows an ON DELETE CASCADE removes count towards the statement that deleted their parents.
    shop.app.execute(
        "CREATE TABLE shop.customer (id int PRIMARY KEY);"
        "INSERT INTO shop.customer SELECT generate_series(1, 10);"
        "ALTER TABLE shop.payment ADD COLUMN customer int REFERENCES shop.customer ON DELETE CASCADE;"
        "UPDATE shop.payment SET customer = 1 + id % 10 WHERE id <= 100"
    )
    shop.audit.guard("shop.payment", max_rows=25, ops=["DELETE"])
    refused(shop.app, "DELETE FROM shop.customer WHERE id <= 3")  # 30 payments
    shop.app.execute("DELETE FROM shop.customer WHERE id <= 2")  # 20 payments
    assert shop.rows() == ROWS - 20


def test_truncate_is_refused_whole_when_guarded(shop: Shop, make_role: Callable[..., str]) -> None:
    shop.audit.guard("shop.payment", max_rows=1000)
    shop.app.execute("CREATE TABLE shop.empty (id int PRIMARY KEY)")
    shop.audit.guard("shop.empty", max_rows=1000, ops=["TRUNCATE"])
    refused(shop.app, "TRUNCATE shop.empty")  # whatever it removes: rows are not counted
    shop.audit.guard("shop.payment", max_rows=1000, ops=["DELETE", "TRUNCATE"])
    error = refused(shop.app, "TRUNCATE shop.payment")
    assert error.diag.message_primary == (
        "pgaudit_tool guard: TRUNCATE of shop.payment refused (TRUNCATE is guarded)"
    )
    assert "TRUNCATE out of its operations" in str(error.diag.message_hint)
    assert shop.rows() == ROWS
    shop.audit.guard("shop.payment", max_rows=1000, ops=["DELETE"])
    shop.app.execute("TRUNCATE shop.payment")  # not guarded: documented
    assert shop.rows() == 0


def test_guards_cover_partitions_also_written_directly(shop: Shop) -> None:
    shop.app.execute(
        "CREATE TABLE shop.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);"
        "CREATE TABLE shop.p1 PARTITION OF shop.p FOR VALUES IN (1);"
        "CREATE TABLE shop.p2 PARTITION OF shop.p FOR VALUES IN (2) PARTITION BY RANGE (id);"
        "CREATE TABLE shop.p2a PARTITION OF shop.p2 FOR VALUES FROM (0) TO (1000);"
        "INSERT INTO shop.p SELECT i, 1 + i % 2 FROM generate_series(1, 400) i"
    )
    shop.audit.enable("shop.p")
    shop.audit.guard("shop.p", max_rows=50, ops=["UPDATE", "DELETE", "INSERT"])
    refused(shop.app, "DELETE FROM shop.p")
    error = refused(shop.app, "DELETE FROM shop.p1")
    assert "DELETE of 200 rows of shop.p1 (a partition of shop.p) refused" in str(error)
    refused(shop.app, "UPDATE shop.p2a SET id = id + 1")
    refused(shop.app, "UPDATE shop.p2 SET id = id + 1")
    refused(shop.app, "UPDATE shop.p SET k = 2 WHERE k = 1")  # rows move across partitions
    shop.app.execute("DELETE FROM shop.p2a WHERE id <= 100")  # 50 rows: at the limit
    if not shop.superuser():
        return
    # A partition made later by the table owner gets the guard at once (event triggers).
    shop.app.execute("CREATE TABLE shop.p3 PARTITION OF shop.p FOR VALUES IN (3)")
    refused(shop.app, "INSERT INTO shop.p3 SELECT i, 3 FROM generate_series(1, 60) i")
    shop.app.execute(
        "CREATE TABLE shop.p4 (id int, k int, PRIMARY KEY (id, k));"
        "ALTER TABLE shop.p ATTACH PARTITION shop.p4 FOR VALUES IN (4)"
    )
    refused(shop.app, "INSERT INTO shop.p4 SELECT i, 4 FROM generate_series(1, 60) i")
    assert guards(shop.audit)["shop.p"]["state"] == "ok"
    # Rows cannot leave by DETACH or DROP of a partition either (DELETE is guarded).
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot be detached"):
        shop.app.execute("ALTER TABLE shop.p DETACH PARTITION shop.p1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        shop.app.execute("DROP TABLE shop.p1")
    # The audit owner may; the detached table keeps no guard trigger.
    shop.audit.conn.execute("ALTER TABLE shop.p DETACH PARTITION shop.p1")
    shop.app.execute("DELETE FROM shop.p1")
    assert (
        count(
            shop.audit.conn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.p1'::regclass"
            " AND tgname LIKE 'pgaudit\\_guard\\_%'",
        )
        == 0
    )
    assert guards(shop.audit)["shop.p"]["state"] == "ok"
    assert not [p for p in shop.audit.doctor() if "guard" in p["problem"]]


def test_a_table_guarded_on_its_own_cannot_be_attached_to_a_guarded_table(shop: Shop) -> None:
    if not shop.superuser():
        pytest.skip("needs the event triggers")
    shop.app.execute(
        "CREATE TABLE shop.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);"
        "CREATE TABLE shop.p9 (id int, k int, PRIMARY KEY (id, k))"
    )
    shop.audit.guard("shop.p", max_rows=10)
    shop.audit.guard("shop.p9", max_rows=10)
    # PostgreSQL 16 refuses it itself (a trigger with a transition table), 15 leaves it to us.
    with pytest.raises(
        (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.FeatureNotSupported),
        match="guard of its own|transition tables",
    ):
        shop.app.execute("ALTER TABLE shop.p ATTACH PARTITION shop.p9 FOR VALUES IN (9)")
    with pytest.raises(TableNotSuitable, match="partition"):
        shop.app.execute("CREATE TABLE shop.p1 PARTITION OF shop.p FOR VALUES IN (1)")
        shop.audit.guard("shop.p1", max_rows=10)


def test_the_audit_owner_dropping_a_guarded_table_takes_its_guard(shop: Shop) -> None:
    shop.audit.guard("shop.payment", max_rows=10)
    refused(shop.app, "DELETE FROM shop.payment")
    shop.audit.disable("shop.payment")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="guarded"):
        shop.app.execute("DROP TABLE shop.payment")
    shop.audit.conn.execute("DROP TABLE shop.payment")
    assert shop.audit.guard_list() == []
    assert (
        count(shop.audit.conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'guard_blocked_%'")
        == 0
    )


def test_tables_without_a_guard_carry_nothing(shop: Shop) -> None:
    shop.app.execute("CREATE TABLE shop.other (id int PRIMARY KEY)")
    before = count(shop.audit.conn, "SELECT count(*) FROM pg_trigger")
    shop.audit.guard("shop.payment", max_rows=10, ops=["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
    triggers = shop.audit.conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE 'pgaudit\\_guard%'"
        " ORDER BY 2"
    ).fetchall()
    assert triggers == [
        ("shop.payment", "pgaudit_guard_delete"),
        ("shop.payment", "pgaudit_guard_insert"),
        ("shop.payment", "pgaudit_guard_truncate"),
        ("shop.payment", "pgaudit_guard_update"),
    ]
    assert (
        count(
            shop.audit.conn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.other'::regclass",
        )
        == 0
    )
    assert shop.audit.guard_remove("shop.payment") is True
    assert shop.audit.guard_remove("shop.payment") is False
    assert count(shop.audit.conn, "SELECT count(*) FROM pg_trigger") == before
    assert (
        count(shop.audit.conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'guard_blocked_%'")
        == 0
    )
    shop.app.execute("DELETE FROM shop.payment")


def test_setting_a_guard_again_changes_it_and_keeps_its_count(shop: Shop) -> None:
    shop.audit.guard("shop.payment", max_rows=10)
    refused(shop.app, "DELETE FROM shop.payment")
    first = guards(shop.audit)["shop.payment"]
    record = shop.audit.guard("shop.payment", max_rows=1000, ops=["delete", "DELETE", "Update"])
    assert record["max_rows"] == 1000 and record["blocked"] == 1 and record["state"] == "ok"
    assert record["ops"] == ["UPDATE", "DELETE"]
    assert (
        record["created_at"] == first["created_at"] and record["changed_at"] > first["changed_at"]
    )
    shop.app.execute("DELETE FROM shop.payment WHERE id <= 900")


def test_a_revert_over_the_limit_is_refused_with_a_clear_error(shop: Shop) -> None:
    shop.app.execute("DELETE FROM shop.payment WHERE id <= 300")
    tx = next(iter(list(shop.audit.history("shop.payment", op="DELETE"))))["txid"]
    shop.audit.guard("shop.payment", max_rows=100, ops=["INSERT"])
    with pytest.raises(GuardRefused) as caught:
        shop.audit.revert(txids=[tx])
    assert "INSERT of 300 rows of shop.payment refused" in caught.value.message
    assert f"SQLSTATE {GUARD_SQLSTATE}" in caught.value.message
    assert caught.value.hint and "pgaudit-tool guard" in caught.value.hint
    assert shop.rows() == ROWS - 300


# --------------------------------------------------------------------------- who may


def test_only_the_audit_owner_sets_or_removes_guards(
    shop: Shop, make_role: Callable[..., str]
) -> None:
    reviewer = make_role("reviewer")
    shop.audit.conn.execute(f"GRANT pgaudit_reader TO {reviewer}")
    shop.audit.guard("shop.payment", max_rows=10)
    refused(shop.app, "DELETE FROM shop.payment")
    for role in (shop.role, reviewer):
        is_reviewer = role == reviewer
        with shop.connect_as(role) as other:
            for statement in (
                "SELECT audit.guard('shop.payment', 100000)",
                "SELECT audit.guard_remove('shop.payment')",
                "UPDATE audit.guard SET max_rows = 100000",
                "DELETE FROM audit.guard",
                "SELECT setval('audit.guard_blocked_' || 'shop.payment'::regclass::oid, 1)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    other.execute(statement)
        dsn = shop.pg_server.dsn_for(shop.audit.conn.info.dbname, user=role)
        with Audit.connect(dsn) as not_owner:
            # (The application role cannot even read the schema's version: refused earlier.)
            with pytest.raises(PermissionDenied) as caught:
                not_owner.guard("shop.payment", max_rows=100000)
            if is_reviewer:
                assert "only the owner of the audit schema" in caught.value.message
                assert caught.value.hint and "Connect as" in caught.value.hint
            with pytest.raises(PermissionDenied):
                not_owner.guard_remove("shop.payment")
        result = cli(dsn, "guard", "shop.payment", "--max-rows", "100000")
        cli_failed(result, 5, "only the owner of the audit schema" if is_reviewer else "permission")
    # The reader sees the guards and their counts.
    with Audit.connect(shop.pg_server.dsn_for(shop.audit.conn.info.dbname, user=reviewer)) as r:
        listed = r.guard_list()
    assert [(g["table"], g["max_rows"], g["blocked"]) for g in listed] == [("shop.payment", 10, 1)]
    refused(shop.app, "DELETE FROM shop.payment")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["shop.nope", "--max-rows", "10"], "does not exist"),
        (["shop.payment", "--max-rows", "0"], "at least 1 row"),
        (["shop.payment", "--max-rows", "-5"], "at least 1 row"),
        (
            ["shop.payment", "--max-rows", "10", "--ops", "DELETE,SELECT"],
            "unknown operation 'SELECT'",
        ),
        (["shop.payment", "--max-rows", "10", "--ops", ""], "unknown operation"),
        (["shop.payment", "--max-rows", "10", "--except-role", "nobody_here"], "does not exist"),
        (["shop.payment", "--max-rows", "10", "--except-role", "PUBLIC"], "does not exist"),
        (["shop.payment"], "--max-rows is required"),
        (["--max-rows", "10"], "a table is required"),
        (["shop.payment", "--remove", "--max-rows", "10"], "--remove takes no"),
        (["--list", "--max-rows", "10"], "--list takes no"),
        (["shop.v", "--max-rows", "10"], "not a table"),
        (["shop.p1", "--max-rows", "10"], "guard the partitioned table instead"),
        (["audit.change", "--max-rows", "10"], "audit schema"),
        (["pg_catalog.pg_class", "--max-rows", "10"], "pg_catalog"),
        (['shop."unterminated', "--max-rows", "10"], 'shop."unterminated'),
        (['"Shop"."Payment"', "--max-rows", "10"], "does not exist"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    shop: Shop, dsn: str, args: list[str], fragment: str
) -> None:
    shop.app.execute(
        "CREATE VIEW shop.v AS SELECT * FROM shop.payment;"
        "CREATE TABLE shop.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);"
        "CREATE TABLE shop.p1 PARTITION OF shop.p FOR VALUES IN (1)"
    )
    triggers = count(shop.audit.conn, "SELECT count(*) FROM pg_trigger")
    cli_failed(cli(dsn, "guard", *args), 2, fragment)
    assert shop.audit.guard_list() == []
    assert count(shop.audit.conn, "SELECT count(*) FROM pg_trigger") == triggers
    assert (
        count(shop.audit.conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'guard_blocked_%'")
        == 0
    )


def test_bad_input_through_the_api_and_sql(shop: Shop) -> None:
    for kwargs in (
        {"max_rows": 0},
        {"max_rows": True},
        {"max_rows": 10, "ops": []},
        {"max_rows": 10, "ops": ["MERGE"]},
        {"max_rows": 10, "except_roles": [""]},
        {"max_rows": 10, "except_roles": ["no such role"]},
    ):
        with pytest.raises(InvalidInput):
            shop.audit.guard("shop.payment", **kwargs)  # type: ignore[arg-type]
    conn = shop.audit.conn
    for statement in (
        "SELECT audit.guard('shop.payment', 0)",
        "SELECT audit.guard('shop.payment', NULL)",
        "SELECT audit.guard('shop.payment', 10, '{}')",
        "SELECT audit.guard('shop.payment', 10, '{DELETE,NULL}')",
        "SELECT audit.guard('shop.payment', 10, '{DROP}')",
        "SELECT audit.guard('shop.payment', 10, p_except_roles => '{nobody_here}')",
        "SELECT audit.guard(NULL, 10)",
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(statement)
    assert shop.audit.guard_list() == []


@pytest.mark.parametrize(
    ("schema", "table"),
    [
        ("Mixed Case", 'Pay "Me" Now'),
        ("ünïcode ✓", "tâble $1 %s %I"),
        ("x'; DROP TABLE shop.payment; --", 'y"); DROP TABLE shop.payment; --'),
    ],
)
def test_odd_identifiers(shop: Shop, dsn: str, schema: str, table: str) -> None:
    q = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    shop.audit.conn.execute(
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(shop.role)
        )
    )
    shop.app.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(q))
    shop.app.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 20)").format(q))
    name = q.as_string(shop.app)
    cli_ok(cli(dsn, "guard", name, "--max-rows", "5", "--ops", "delete"))
    error = refused(shop.app, sql.SQL("DELETE FROM {}").format(q).as_string(shop.app))
    assert f"DELETE of 20 rows of {name} refused" in str(error.diag.message_primary)
    listed = json.loads(cli_ok(cli(dsn, "guard", "--list", "--format", "json")))
    assert [(g["table"], g["blocked"], g["state"]) for g in listed] == [(name, 1, "ok")]
    assert not [p for p in shop.audit.doctor() if "guard" in p["problem"]]
    cli_ok(cli(dsn, "guard", "--remove", name))
    shop.app.execute(sql.SQL("DELETE FROM {}").format(q))
    assert count(shop.audit.conn, "SELECT count(*) FROM shop.payment") == ROWS


# --------------------------------------------------------------------------- the CLI


def test_cli_set_list_remove(shop: Shop, dsn: str, make_role: Callable[..., str]) -> None:
    bulk = make_role("bulk")
    result = cli(
        dsn,
        "guard",
        "shop.payment",
        "--max-rows",
        "100",
        "--ops",
        "DELETE,UPDATE",
        "--ops",
        "truncate",
        "--except-role",
        bulk,
    )
    assert cli_ok(result) == ""
    assert result.stderr.strip() == (
        "guard on shop.payment: UPDATE or DELETE of more than 100 row(s) in one statement"
        f" refused; TRUNCATE refused, except for members of {bulk}"
    )
    refused(shop.app, "DELETE FROM shop.payment")
    listed = json.loads(cli_ok(cli(dsn, "guard", "--list", "--format", "json")))
    assert len(listed) == 1 and list(listed[0]) == list(GUARD_COLUMNS)
    g = listed[0]
    assert (g["table"], g["ops"], g["max_rows"], g["except_roles"], g["blocked"], g["state"]) == (
        "shop.payment",
        ["UPDATE", "DELETE", "TRUNCATE"],
        100,
        [bulk],
        1,
        "ok",
    )
    lines = cli_ok(cli(dsn, "guard", "--list", "--format", "jsonl")).splitlines()
    assert [json.loads(ln)["table"] for ln in lines] == ["shop.payment"]
    text = cli_ok(cli(dsn, "guard", "--list", "--format", "csv"))
    assert text.splitlines()[0] == ",".join(GUARD_COLUMNS)
    table = cli_ok(cli(dsn, "guard", "--list"))
    assert "shop.payment" in table and "(1 row)" in table
    assert json.loads(cli_ok(cli(dsn, "guard", "--list", "shop.payment", "--format", "json")))
    result = cli(dsn, "guard", "--remove", "shop.payment")
    assert cli_ok(result) == "" and result.stderr.strip() == "shop.payment: guard removed"
    result = cli(dsn, "guard", "--remove", "shop.payment")
    assert cli_ok(result) == "" and result.stderr.strip() == "shop.payment: had no guard"
    assert json.loads(cli_ok(cli(dsn, "guard", "--list", "--format", "json"))) == []
    shop.app.execute("DELETE FROM shop.payment")


# --------------------------------------------------------------------------- attacks


TRIGGER_ATTACKS = [
    "ALTER TABLE shop.payment DISABLE TRIGGER pgaudit_guard_delete",
    "ALTER TABLE shop.payment DISABLE TRIGGER ALL",
    "ALTER TABLE shop.payment DISABLE TRIGGER USER",
    "ALTER TABLE shop.payment ENABLE TRIGGER pgaudit_guard_delete",
    "ALTER TABLE shop.payment ENABLE REPLICA TRIGGER pgaudit_guard_delete",
    "ALTER TRIGGER pgaudit_guard_delete ON shop.payment RENAME TO renamed",
    "DROP TRIGGER pgaudit_guard_delete ON shop.payment",
    "DROP TRIGGER pgaudit_guard_truncate ON shop.payment",
    "CREATE OR REPLACE TRIGGER pgaudit_guard_delete AFTER DELETE ON shop.payment"
    " FOR EACH STATEMENT EXECUTE FUNCTION shop.noop()",
    "CREATE OR REPLACE TRIGGER pgaudit_guard_delete AFTER INSERT ON shop.payment"
    " FOR EACH STATEMENT EXECUTE FUNCTION shop.noop()",
    "DROP TABLE shop.payment",
]


def test_a_table_owner_cannot_switch_a_guard_off(tenant: Shop) -> None:
    """Each attack in turn (DROP TABLE last). With the guard event triggers (installed by a
    superuser) every one is refused; without them each works, and guard --list and doctor see
    it, and doctor's fix puts the guard back before the next attack."""
    tenant.app.execute(
        "CREATE FUNCTION shop.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
    )
    superuser = tenant.superuser()
    for attack in TRIGGER_ATTACKS:
        try:
            _switch_a_guard_off(tenant, attack, superuser)
        except AssertionError as exc:
            raise AssertionError(f"{attack}: {exc}") from None


def _switch_a_guard_off(tenant: Shop, attack: str, superuser: bool) -> None:
    if superuser:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            tenant.app.execute(attack)
        assert guards(tenant.audit)["shop.payment"]["state"] == "ok"
        refused(tenant.app, "DELETE FROM shop.payment")
        refused(tenant.app, "TRUNCATE shop.payment")
        assert tenant.rows() == ROWS
        return
    tenant.app.execute(attack)
    if attack.startswith("DROP TABLE"):
        state = "table dropped"
    else:
        listed = guards(tenant.audit)["shop.payment"]
        state = listed["state"]
        assert state != "ok"
    problems = [p for p in tenant.audit.doctor() if "guard" in p["problem"]]
    assert problems, state
    if not attack.startswith("DROP TABLE"):
        assert any(
            p["severity"] == "error" and p["fix"].startswith("SELECT audit.guard(")
            for p in problems
        )
        # The fix (as doctor --fix runs it) puts the guard back.
        tenant.audit.apply_fixes([p["fix"] for p in problems if p["fix"]])
        assert guards(tenant.audit)["shop.payment"]["state"] == "ok"
        refused(tenant.app, "DELETE FROM shop.payment")


def test_replication_role_does_not_switch_guards_off(tenant: Shop, pg_server: PgServer) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        tenant.app.execute("SET session_replication_role = replica")
    with psycopg.connect(pg_server.dsn_for(tenant.audit.conn.info.dbname), autocommit=True) as su:
        su.execute("SET session_replication_role = replica")
        refused(su, "DELETE FROM shop.payment")
    assert tenant.rows() == ROWS


def test_hostile_functions_and_operators_on_the_search_path_are_never_used(tenant: Shop) -> None:
    """Look-alikes of everything the guard function calls, first on the writer's search_path:
    the guard still counts right, and none of them runs (as the audit owner or at all)."""
    tenant.app.execute(
        "CREATE TABLE shop.ran (who text); GRANT INSERT ON shop.ran TO PUBLIC;"
        "CREATE FUNCTION shop.le(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN"
        f" BEGIN EXECUTE 'ALTER ROLE {tenant.role} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;"
        " INSERT INTO shop.ran VALUES (current_user); RETURN true; END $f$;"
        "CREATE OPERATOR shop.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = shop.le);"
        "CREATE FUNCTION shop.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN"
        " INSERT INTO shop.ran VALUES (current_user); RETURN false; END $f$;"
        "CREATE OPERATOR shop.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shop.eq);"
        "CREATE FUNCTION shop.zero(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';"
        "CREATE AGGREGATE shop.count(*) (SFUNC = shop.zero, STYPE = bigint, INITCOND = '0');"
        "CREATE FUNCTION shop.nextval(regclass) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';"
        "CREATE FUNCTION shop.format(text, VARIADIC text[]) RETURNS text LANGUAGE sql AS 'SELECT ''x''';"
        "CREATE FUNCTION shop._guard_fire() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NULL; END $f$;"
        "CREATE TABLE shop.old_rows (x int); CREATE TABLE shop.new_rows (x int);"
        "SET search_path = shop, pg_catalog, public"
    )
    error = refused(tenant.app, "DELETE FROM shop.payment")
    assert "DELETE of 500 rows of shop.payment refused" in str(error)
    refused(tenant.app, "INSERT INTO shop.payment SELECT i, i FROM generate_series(1001, 1200) i")
    tenant.app.execute("DELETE FROM shop.payment WHERE id <= 100")
    assert tenant.rows() == ROWS - 100
    assert count(tenant.audit.conn, "SELECT count(*) FROM shop.ran") == 0
    assert (
        count(
            tenant.audit.conn, f"SELECT rolsuper::int FROM pg_roles WHERE rolname = '{tenant.role}'"
        )
        == 0
    )
    assert guards(tenant.audit)["shop.payment"]["blocked"] == 2


def test_a_partition_cannot_bring_its_own_guard_triggers(tenant: Shop) -> None:
    tenant.app.execute(
        "CREATE FUNCTION shop.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
        "CREATE TABLE shop.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);"
        "CREATE TABLE shop.p1 PARTITION OF shop.p FOR VALUES IN (1);"
        "CREATE TABLE shop.p2 (id int, k int, PRIMARY KEY (id, k));"
        "CREATE TRIGGER pgaudit_guard_delete AFTER DELETE ON shop.p2 FOR EACH STATEMENT EXECUTE FUNCTION shop.noop()"
    )
    if not tenant.superuser():
        tenant.app.execute("GRANT TRIGGER ON shop.p, shop.p1 TO " + tenant.audit.conn.info.user)
    tenant.audit.guard("shop.p", max_rows=10)
    if tenant.superuser():
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="triggers of its own"):
            tenant.app.execute("ALTER TABLE shop.p ATTACH PARTITION shop.p2 FOR VALUES IN (2)")
        return
    tenant.app.execute("ALTER TABLE shop.p ATTACH PARTITION shop.p2 FOR VALUES IN (2)")
    assert guards(tenant.audit)["shop.p"]["state"] == "triggers altered"
    assert [
        p for p in tenant.audit.doctor() if "shop.p2" in p["problem"] and p["severity"] == "error"
    ]


# --------------------------------------------------------------------------- doctor


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("DROP TRIGGER pgaudit_guard_update ON shop.payment", "missing"),
        ("ALTER TABLE shop.payment DISABLE TRIGGER pgaudit_guard_update", "not ENABLE ALWAYS"),
        ("ALTER TABLE shop.payment ENABLE TRIGGER pgaudit_guard_update", "not ENABLE ALWAYS"),
        ("UPDATE audit.guard SET max_rows = 20", "other arguments"),
        ("UPDATE audit.guard SET ops = '{DELETE}'", "left over"),
        ("ALTER TRIGGER pgaudit_guard_update ON shop.payment RENAME TO x", "another name"),
    ],
)
def test_doctor_reports_a_damaged_guard_and_fixes_it(
    shop: Shop, dsn: str, damage: str, expected: str
) -> None:
    shop.audit.guard("shop.payment", max_rows=10)
    shop.audit.conn.execute(damage)  # the audit owner (a superuser) may
    problems = [p for p in shop.audit.doctor() if "guard trigger" in p["problem"]]
    assert problems and all(p["severity"] == "error" for p in problems)
    assert any(expected in p["problem"] for p in problems), problems
    cli_failed_code = cli(dsn, "doctor")
    assert cli_failed_code.exit_code == 7
    cli_ok(cli(dsn, "doctor", "--fix", "--yes"))
    assert not [p for p in shop.audit.doctor() if "guard" in p["problem"]]
    assert guards(shop.audit)["shop.payment"]["state"] == "ok"
    refused(shop.app, "DELETE FROM shop.payment")


def test_doctor_reports_leftovers(shop: Shop, make_role: Callable[..., str]) -> None:
    gone = make_role("gone")
    shop.audit.guard("shop.payment", max_rows=10, except_roles=[gone])
    shop.audit.conn.execute(f"DROP ROLE {gone}")
    shop.audit.conn.execute("DELETE FROM audit.guard")  # the registry row deleted by hand
    problems = {p["problem"]: p for p in shop.audit.doctor() if "guard" in p["problem"]}
    assert any("left on a table no guard covers" in k for k in problems), problems
    assert any("no longer exists" in k for k in problems), problems
    shop.audit.apply_fixes([p["fix"] for p in problems.values() if p["fix"]])
    assert not [p for p in shop.audit.doctor() if "guard" in p["problem"]]
    shop.app.execute("DELETE FROM shop.payment")


# --------------------------------------------------------------------------- cost


def test_guard_cost_runs(audit: Audit) -> None:
    from pgaudit_tool.bench.guardcost import guard_cost

    result = guard_cost(audit.conninfo, statements=50, rounds=2)
    assert {
        "guard_cost_us",
        "guard_cost_us_range",
        "guarded_us",
        "unguarded_cost_us",
        "never_guarded_us",
        "never_guarded_delta_us",
    } <= set(result)
    low, high = result["guard_cost_us_range"]
    assert low <= result["guard_cost_us"] <= high
    assert result["unguarded_cost_us"] > 0 and result["guarded_us"] > 0
    # Nothing left behind: no scratch schema, guard, trigger or counter.
    assert audit.guard_list() == []
    assert (
        count(
            audit.conn,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgaudit\\_guardcost%'",
        )
        == 0
    )
    assert count(audit.conn, "SELECT count(*) FROM audit.tracked_table") == 0
