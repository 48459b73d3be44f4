"""The ``pgaudit-tool`` command end to end, on the real servers.

Most commands run in-process through click's CliRunner (stdout and stderr kept apart); the
checks that matter for users of a shell (exit codes, one clean message on stderr, no traceback,
nothing on stdout, the environment read by libpq) run the installed console script in a
subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgaudit_tool import Audit, audit_context, tables
from pgaudit_tool.cli import _confirm, main
from pgaudit_tool.connection import LIBPQ_ENV_VARS
from pgaudit_tool.db import lock_timeout_of, write_transaction
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.history import HISTORY_COLUMNS, PEOPLE_COLUMNS
from pgaudit_tool.schema import head_revision
from pgaudit_tool.tables import STATUS_COLUMNS
from tests.conftest import PgServer

COMMANDS = (
    "install",
    "enable",
    "disable",
    "refresh",
    "status",
    "history",
    "transaction",
    "blame",
    "row-at",
    "table-at",
    "diff",
    "checkpoint",
    "verify",
    "doctor",
    "reattach",
    "maintain",
    "partitions",
    "archive",
    "retention",
    "hold",
    "revert",
    "report",
    "anomalies",
    "watch",
    "alerts",
    "tail",
    "guard",
    "bench",
    "demo",
)
EXIT_BAD_INPUT, EXIT_CONNECT, EXIT_NOT_INSTALLED, EXIT_PERMISSION = 2, 3, 4, 5
EXIT_LOCK_TIMEOUT = 8


def _console_script() -> str:
    here = Path(sys.executable).with_name("pgaudit-tool")
    found = str(here) if here.is_file() else shutil.which("pgaudit-tool")
    assert found, "the pgaudit-tool console script is not installed"
    return found


PGAUDIT_TOOL = _console_script()


# --------------------------------------------------------------------------- running the CLI


def _clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment without any libpq variable or DATABASE_URL, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LIBPQ_ENV_VARS
        and k != "DATABASE_URL"
        and not k.startswith("PG")
        # pytest-xdist's workers have COLUMNS=80 LINES=24, which would override the size of
        # the terminal a test gives the CLI (as in a shell that does not export them).
        and k not in ("COLUMNS", "LINES")
    }
    env["HOME"] = str(home)  # no developer ~/.pgpass or ~/.pg_service.conf
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pgaudit-tool`` with a clean environment (plus ``env``)."""
    home = home or Path(os.environ.get("TMPDIR", "/tmp"))
    return subprocess.run(
        [PGAUDIT_TOOL, *args],
        env=_clean_env(home, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def invoke(dsn: str, *args: str) -> Result:
    """Run a command in-process; an unexpected exception fails the test."""
    result = CliRunner().invoke(main, ["--dsn", dsn, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(result: Result | subprocess.CompletedProcess[str]) -> str:
    """Assert success; return stdout."""
    code = result.exit_code if isinstance(result, Result) else result.returncode
    assert code == 0, f"exit {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: Result | subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert a clean failure: exit ``code``, nothing on stdout, one message on stderr."""
    got = result.exit_code if isinstance(result, Result) else result.returncode
    assert got == code, (
        f"exit {got}, expected {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert result.stdout == ""
    err = result.stderr
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) <= 2 and all(ln.startswith(("error: ", "hint: ")) for ln in lines), err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"
    return err


def status_json(dsn: str) -> dict[str, dict[str, Any]]:
    records = json.loads(ok(invoke(dsn, "status", "--format", "json")))
    for record in records:
        assert list(record) == list(STATUS_COLUMNS)
    return {r["table"]: r for r in records}


def history_json(dsn: str, *args: str) -> list[dict[str, Any]]:
    records = json.loads(ok(invoke(dsn, "history", *args, "--format", "json")))
    assert isinstance(records, list)
    return records


def numbers_exact(image: dict[str, Any]) -> dict[str, Any]:
    """A row image with numeric values as Decimal, whether output as JSON numbers or strings."""
    return {k: Decimal(str(v)) if k == "amount" and v is not None else v for k, v in image.items()}


def _count(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> int:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return int(row[0])


def capture_triggers(conn: psycopg.Connection[Any]) -> int:
    return _count(
        conn,
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgaudit\\_%'"
        " AND tgrelid::regclass::text NOT LIKE 'audit.%'",  # not the journal's own triggers
    )


def registered(conn: psycopg.Connection[Any]) -> int:
    return _count(conn, "SELECT count(*) FROM audit.tracked_table")


def has_schema(conn: psycopg.Connection[Any], name: str) -> bool:
    return _count(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)) == 1


SHOP_DDL = """
CREATE SCHEMA sales;
CREATE TABLE sales.orders (
    id            int PRIMARY KEY,
    customer      text NOT NULL,
    amount        numeric(12, 2),
    password_hash text
);
CREATE TABLE sales.customers (id int PRIMARY KEY, name text);
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Items" (
    order_no int,
    line     int,
    product  text NOT NULL,
    qty      int NOT NULL,
    PRIMARY KEY (order_no, line)
);
CREATE SCHEMA misc;
CREATE TABLE misc.keyless (a int, b text);
CREATE VIEW misc.orders_view AS SELECT * FROM sales.orders;
"""
ITEMS = '"Sales Dept"."Order Items"'


@pytest.fixture
def shop(audit: Audit) -> Audit:
    """Audit schema installed; sales, "Sales Dept" and misc (unauditable objects) created."""
    audit.conn.execute(SHOP_DDL)
    return audit


# --------------------------------------------------------------------------- install


def test_install_dry_run_then_install_is_idempotent(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    dry = run_cli("--dsn", dsn, "install", "--dry-run")
    script = ok(dry)
    assert "CREATE TABLE audit.change" in script
    assert "CREATE OR REPLACE FUNCTION audit.enable" in script
    assert dry.stderr == ""
    assert not has_schema(conn, "audit"), "--dry-run must change nothing"

    first = run_cli("--dsn", dsn, "install")
    assert ok(first) == ""
    head = head_revision()
    assert f"installed the audit schema, revision {head}" in first.stderr
    assert has_schema(conn, "audit")

    second = run_cli("--dsn", dsn, "install")
    assert ok(second) == ""
    assert "up to date" in second.stderr and head in second.stderr
    assert conn.execute("SELECT array_agg(version_num) FROM audit.schema_version").fetchone() == (
        [head],
    )

    again = ok(run_cli("--dsn", dsn, "install", "--dry-run"))
    assert "nothing to do" in again
    assert "CREATE" not in again


# --------------------------------------------------------------------------- enable / disable / status


def test_exclude_missing_from_one_table_changes_nothing(
    shop: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    result = invoke(dsn, "enable", "sales.orders", ITEMS, "--exclude", "password_hash")
    failed(result, EXIT_BAD_INPUT, "password_hash", "does not exist")
    assert registered(conn) == 0
    assert capture_triggers(conn) == 0
    assert status_json(dsn) == {}


def test_enable_status_disable_lifecycle(
    shop: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    enabled = invoke(
        dsn, "enable", "sales.orders", "--exclude", "password_hash", "--format", "json"
    )
    rows = json.loads(ok(enabled))
    assert "capture enabled on 1 table(s)" in enabled.stderr
    assert [(r["table"], r["state"], r["excluded_columns"]) for r in rows] == [
        ("sales.orders", "ok", ["password_hash"])
    ]
    items = json.loads(ok(invoke(dsn, "enable", ITEMS, "--format", "json")))
    assert [(r["table"], r["key_columns"]) for r in items] == [(ITEMS, ["order_no", "line"])]

    # --schema: every table of sales; orders keeps its excluded column.
    ok(invoke(dsn, "enable", "--schema", "sales"))
    status = status_json(dsn)
    assert sorted(status) == [ITEMS, "sales.customers", "sales.orders"]
    for record in status.values():
        assert record["state"] == "ok"
        assert record["enabled"] is True
        assert record["triggers_expected"] == 4
        assert record["triggers_present"] == record["triggers_expected"]
        assert record["triggers_always"] == record["triggers_expected"]
        assert datetime.fromisoformat(record["enabled_at"]).tzinfo is not None
    assert status["sales.orders"]["excluded_columns"] == ["password_hash"]
    assert status["sales.orders"]["key_source"] == "primary key"

    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 10, 'secret')")
    conn.execute("UPDATE sales.orders SET amount = 12 WHERE id = 1")

    # disable: history stays.
    disabled = invoke(dsn, "disable", "sales.orders")
    assert ok(disabled) == ""
    assert "sales.orders: capture disabled" in disabled.stderr
    record = status_json(dsn)["sales.orders"]
    assert (record["state"], record["enabled"], record["triggers_present"]) == (
        "disabled",
        False,
        0,
    )
    assert record["disabled_at"] is not None
    conn.execute("UPDATE sales.orders SET amount = 13 WHERE id = 1")  # not captured
    assert [r["op"] for r in history_json(dsn, "sales.orders")] == ["INSERT", "UPDATE"]

    again = invoke(dsn, "disable", "sales.orders")
    assert ok(again) == ""
    assert "sales.orders: was not audited" in again.stderr

    # enable again: the excluded column is remembered, capture resumes.
    ok(invoke(dsn, "enable", "sales.orders"))
    record = status_json(dsn)["sales.orders"]
    assert (record["state"], record["excluded_columns"]) == ("ok", ["password_hash"])
    conn.execute("DELETE FROM sales.orders WHERE id = 1")
    changes = history_json(dsn, "sales.orders")
    assert [r["op"] for r in changes] == ["INSERT", "UPDATE", "DELETE"]
    assert numbers_exact(changes[-1]["old"]) == {"id": 1, "customer": "ann", "amount": Decimal(13)}
    assert all("password_hash" not in (r["old"] or {}) | (r["new"] or {}) for r in changes)

    # refresh after DDL keeps the settings.
    conn.execute("ALTER TABLE sales.orders RENAME COLUMN customer TO client")
    refreshed = invoke(dsn, "refresh", "sales.orders")
    assert ok(refreshed) == ""
    assert "capture regenerated on 1 table(s)" in refreshed.stderr
    assert status_json(dsn)["sales.orders"]["state"] == "ok"


def test_enable_skip_unsuitable(shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE misc.fine (id int PRIMARY KEY)")
    failed(invoke(dsn, "enable", "--schema", "misc"), EXIT_BAD_INPUT, "misc.keyless")
    assert registered(conn) == 0
    conn.execute('CREATE TABLE misc."Odd One" (v int)')
    result = invoke(dsn, "enable", "--schema", "misc", "--skip-unsuitable", "--format", "json")
    rows = json.loads(ok(result))
    assert [r["table"] for r in rows] == ["misc.fine"]
    assert sorted(status_json(dsn)) == ["misc.fine"]
    # Each table left out is named on stderr, one line each, with the reason.
    assert result.stderr.splitlines() == [
        'misc."Odd One": skipped: table misc."Odd One" has no primary key and no replica'
        " identity index, so its rows cannot be identified",
        "misc.keyless: skipped: table misc.keyless has no primary key and no replica identity"
        " index, so its rows cannot be identified",
        "capture enabled on 1 table(s), 2 skipped",
    ]
    # The Python API returns them too: the list of enabled tables has them as .skipped.
    enabled = shop.enable(schemas=["misc"], skip_unsuitable=True)
    assert [r["table"] for r in enabled] == ["misc.fine"]
    assert sorted(enabled.skipped) == ['misc."Odd One"', "misc.keyless"]
    assert "no primary key" in enabled.skipped["misc.keyless"]
    assert shop.enable("misc.fine").skipped == {}


# --------------------------------------------------------------------------- history


@pytest.fixture
def audited_shop(shop: Audit, dsn: str) -> Audit:
    shop.enable("sales.orders", exclude=["password_hash"])
    shop.enable(ITEMS)
    return shop


def _tcp(dsn: str, application_name: str = "shop-web") -> psycopg.Connection[Any]:
    params = conninfo_to_dict(dsn)
    assert params.get("host") == "127.0.0.1", "the test servers listen on TCP 127.0.0.1"
    return psycopg.connect(dsn, autocommit=True, application_name=application_name)


def _txid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def test_history_json_record(audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 10.50, 'secret')")
    before = datetime.now().astimezone() - timedelta(seconds=1)
    with _tcp(dsn) as tcp:
        with audit_context(tcp, "alice", {"ticket": "T-1", "n": 2}):
            tcp.execute("UPDATE sales.orders SET amount = 11.25, password_hash = 'x' WHERE id = 1")
            txid = _txid(tcp)
        after = datetime.now().astimezone() + timedelta(seconds=1)

    records = history_json(dsn, "sales.orders")
    assert len(records) == 2
    for record in records:
        assert list(record) == list(HISTORY_COLUMNS)
    update = records[1]
    assert isinstance(update["id"], int) and update["id"] > records[0]["id"]
    assert update["table"] == "sales.orders"
    assert update["op"] == "UPDATE"
    assert update["pk"] == {"id": 1}
    assert numbers_exact(update["old"]) == {"id": 1, "customer": "ann", "amount": Decimal("10.5")}
    assert numbers_exact(update["new"]) == {"id": 1, "customer": "ann", "amount": Decimal("11.25")}
    assert update["changed"] == ["amount"]
    assert update["txid"] == txid
    at = datetime.fromisoformat(update["at"])
    assert at.tzinfo is not None
    assert before <= at <= after
    assert update["db_user"] == "postgres"
    assert update["role"] == "postgres"
    assert update["actor"] == "alice"
    assert update["context"] == {"ticket": "T-1", "n": 2}
    assert update["application_name"] == "shop-web"
    assert isinstance(update["client_port"], int)
    assert update["client_addr"] == "127.0.0.1"


def test_history_keeps_numeric_values_exact(
    shop: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    big = Decimal("12345678901234567890.0123456789")
    conn.execute(
        "CREATE TABLE sales.ledger (id int PRIMARY KEY, balance numeric(40, 10), fee numeric(6, 2))"
    )
    shop.enable("sales.ledger")
    conn.execute("INSERT INTO sales.ledger VALUES (1, %s, 10.50)", (big,))
    for fmt in ("json", "jsonl"):
        out = ok(invoke(dsn, "history", "sales.ledger", "--format", fmt))
        [record] = (
            json.loads(out, parse_float=Decimal)
            if fmt == "json"
            else [json.loads(out, parse_float=Decimal)]
        )
        balance, fee = record["new"]["balance"], record["new"]["fee"]
        assert Decimal(str(balance)) == big, f"numeric {big} came out as {balance!r}"
        assert str(fee) == "10.50", f"numeric 10.50 came out as {fee!r}"


def test_history_of_table_with_columns_named_like_row_aliases(
    shop: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """Columns called "n" or "o" must not be mistaken for the whole new/old row."""
    conn.execute("CREATE TABLE sales.pairs (id int PRIMARY KEY, n int, o text)")
    shop.enable("sales.pairs")
    conn.execute("INSERT INTO sales.pairs VALUES (1, 10, 'x')")
    conn.execute("UPDATE sales.pairs SET n = 11 WHERE id = 1")
    conn.execute("DELETE FROM sales.pairs")
    records = history_json(dsn, "sales.pairs")
    assert [(r["op"], r["old"], r["new"]) for r in records] == [
        ("INSERT", None, {"id": 1, "n": 10, "o": "x"}),
        ("UPDATE", {"id": 1, "n": 10, "o": "x"}, {"id": 1, "n": 11, "o": "x"}),
        ("DELETE", {"id": 1, "n": 11, "o": "x"}, None),
    ]


def _make_changes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Two batches of changes by alice and bob; returns txids and the instant between them."""
    with audit_context(conn, "alice", {"ticket": "T-1"}):
        conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 10, 'p'), (2, 'bo', 20, 'q')")
        conn.execute(f"INSERT INTO {ITEMS} VALUES (1, 1, 'pen', 1), (1, 2, 'ink', 3)")
        alice = _txid(conn)
    time.sleep(0.05)
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    boundary: datetime = row[0]
    time.sleep(0.05)
    with audit_context(conn, "bob", {"ticket": "T-2"}):
        conn.execute("UPDATE sales.orders SET amount = 11 WHERE id = 1")
        conn.execute(f"UPDATE {ITEMS} SET qty = 4 WHERE order_no = 1 AND line = 2")
        conn.execute("DELETE FROM sales.orders WHERE id = 2")
        bob = _txid(conn)
    return {"alice": alice, "bob": bob, "boundary": boundary}


def test_history_formats(audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    _make_changes(conn)
    as_json = history_json(dsn)
    assert len(as_json) == 7

    lines = ok(invoke(dsn, "history", "--format", "jsonl")).splitlines()
    assert [json.loads(line) for line in lines] == as_json

    text = ok(invoke(dsn, "history", "--format", "csv"))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(HISTORY_COLUMNS)
    assert len(rows) == 1 + 7
    by_column = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [r["id"] for r in by_column] == [str(r["id"]) for r in as_json]
    assert [r["table"] for r in by_column] == [r["table"] for r in as_json]
    assert json.loads(by_column[0]["pk"]) == as_json[0]["pk"]
    assert by_column[0]["actor"] == "alice"

    table = ok(invoke(dsn, "history", "--format", "table"))
    header = table.splitlines()[0]
    assert [c.strip() for c in header.split("|")] == list(PEOPLE_COLUMNS)
    assert table.rstrip().endswith("(7 rows)")
    assert ITEMS in table
    exact = [json.loads(line, parse_float=Decimal) for line in lines]
    update = next(r for r in exact if r["op"] == "UPDATE")
    column = update["changed"][0]
    before, after = (
        str(v) if isinstance(v, Decimal) else json.dumps(v)
        for v in (update["old"][column], update["new"][column])
    )
    assert f"{column}: {before} -> {after}" in table  # the change itself, in view
    wide = ok(invoke(dsn, "history", "--format", "table", "--wide")).splitlines()[0]
    assert [c.strip() for c in wide.split("|")] == list(HISTORY_COLUMNS)
    chosen = ok(invoke(dsn, "history", "--columns", "op, txid,changes")).splitlines()[0]
    assert [c.strip() for c in chosen.split("|")] == ["op", "txid", "changes"]
    bad = invoke(dsn, "history", "--columns", "op,nope")
    assert bad.exit_code == 2 and "nope" in bad.stderr

    empty = ok(invoke(dsn, "history", "--actor", "nobody", "--format", "table"))
    assert empty.rstrip().endswith("(0 rows)")
    assert ok(invoke(dsn, "history", "--actor", "nobody", "--format", "json")).strip() == "[]"
    assert ok(invoke(dsn, "history", "--actor", "nobody", "--format", "jsonl")) == ""


def test_history_filters(audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    made = _make_changes(conn)
    everything = history_json(dsn)
    ids = [r["id"] for r in everything]

    def select(*args: str) -> list[tuple[str, str, Any]]:
        return [(r["table"], r["op"], r["pk"]) for r in history_json(dsn, *args)]

    assert select("--actor", "bob") == [
        ("sales.orders", "UPDATE", {"id": 1}),
        (ITEMS, "UPDATE", {"order_no": 1, "line": 2}),
        ("sales.orders", "DELETE", {"id": 2}),
    ]
    assert select("--txid", str(made["alice"])) == select("--actor", "alice")
    assert len(select("--txid", str(made["alice"]))) == 4
    assert select("--op", "delete") == [("sales.orders", "DELETE", {"id": 2})]
    assert select("--op", "UPDATE", "--actor", "alice") == []
    assert [r["id"] for r in history_json(dsn, "--limit", "2")] == ids[:2]
    assert history_json(dsn, "--limit", "0") == []
    assert select("sales.orders", "--pk", '{"id": 1}') == [
        ("sales.orders", "INSERT", {"id": 1}),
        ("sales.orders", "UPDATE", {"id": 1}),
    ]
    assert select(ITEMS, "--pk", '{"line": 2, "order_no": 1}') == [
        (ITEMS, "INSERT", {"order_no": 1, "line": 2}),
        (ITEMS, "UPDATE", {"order_no": 1, "line": 2}),
    ]
    assert select("--db-user", "postgres") == [(r["table"], r["op"], r["pk"]) for r in everything]
    assert select("--db-user", "somebody_else") == []

    boundary = made["boundary"].isoformat()
    since = history_json(dsn, "--since", boundary)
    until = history_json(dsn, "--until", boundary)
    assert {r["actor"] for r in since} == {"bob"} and len(since) == 3
    assert {r["actor"] for r in until} == {"alice"} and len(until) == 4
    assert history_json(dsn, "--since", boundary, "--until", boundary) == []
    # Another spelling of a zone-aware time: the same instant, two hours east.
    shifted = made["boundary"].astimezone(timezone(timedelta(hours=2)))
    assert len(history_json(dsn, "--since", shifted.isoformat())) == 3


def test_history_time_forms(audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    """Every form a time option takes, in --since and --until: an interval and 'ago', @EPOCH
    (with and without a fraction), ISO-8601 with and without a zone, PostgreSQL's words."""
    made = _make_changes(conn)
    boundary: datetime = made["boundary"]
    before = [
        "2 hours 30 minutes ago",
        "1h30m ago",
        "90 min ago",
        "1 day ago",
        "1.5 days ago",
        "3 weeks ago",
        "P1DT2H ago",
        "@ 2 hours ago",
        "@0",
        "@0.5",
        f"@{int(boundary.timestamp()) - 60}",
        "yesterday",
        "2000-01-01",
        "2000-01-01T00:00:00+14:00",
    ]
    for form in before:
        assert len(history_json(dsn, "--since", form)) == 7, form
        assert history_json(dsn, "--until", form) == [], form
    assert len(history_json(dsn, "--until", "now")) == 7
    assert len(history_json(dsn, "--until", "-1 hour ago")) == 7  # an hour from now
    # @EPOCH with microseconds: the instant between alice's changes and bob's.
    epoch = f"@{boundary.timestamp():.6f}"
    assert {r["actor"] for r in history_json(dsn, "--since", epoch)} == {"bob"}
    assert {r["actor"] for r in history_json(dsn, "--until", epoch)} == {"alice"}
    assert len(history_json(dsn, "--since", epoch)) == 3
    # The same instant, written without a zone: read in the session's TimeZone.
    local = conn.execute(
        "SELECT to_char(%s::timestamptz, 'YYYY-MM-DD HH24:MI:SS.US')", (boundary,)
    ).fetchone()[0]  # type: ignore[index]
    assert "+" not in local and "T" not in local
    assert len(history_json(dsn, "--since", local)) == 3


def test_bad_time_names_the_option_and_the_forms(
    audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    _make_changes(conn)
    changes = _count(conn, "SELECT count(*) FROM audit.change")
    cases = [  # the command, and the option whose value is bad
        (("history", "--since", "2 parsecs ago"), "--since"),
        (("history", "--until", "@abc"), "--until"),
        (("history", "--until", "@"), "--until"),
        (("history", "--since", "ago"), "--since"),
        (("history", "--since", "soon"), "--since"),
        (("diff", "sales.orders", "--from", "1h30 fortnights ago"), "--from"),
        (("diff", "sales.orders", "--from", "1 hour ago", "--to", "@1e3"), "--to"),
        (("row-at", "sales.orders", "--pk", "1", "--at", "@ 12 parsecs"), "--at"),
        (("table-at", "sales.orders", "--at", "tomorrow-ish", "--into", "public.snap"), "--at"),
        (("revert", "--table", "sales.orders", "--to", "5 fortnights ago", "--yes"), "--to"),
        (("revert", "--actor", "bob", "--since", "bad ago", "--yes"), "--since"),
        (("anomalies", "--until", "later"), "--until"),
        (("alerts", "--since", "@x"), "--since"),
    ]
    for args, option in cases:
        value = args[args.index(option) + 1]
        failed(
            invoke(dsn, *args),
            EXIT_BAD_INPUT,
            f"error: {option} {value!r} is not a",
            "hint: use ISO-8601",
            "ago",
            "@1700000000",
            "yesterday",
        )
    assert _count(conn, "SELECT count(*) FROM audit.change") == changes
    assert _count(conn, "SELECT count(*) FROM pg_class WHERE relname = 'snap'") == 0


def test_history_last(audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    """--last N: the N most recent changes, listed oldest first like every listing."""
    _make_changes(conn)
    ids = [r["id"] for r in history_json(dsn)]
    assert len(ids) == 7 and ids == sorted(ids)
    assert [r["id"] for r in history_json(dsn, "--last", "3")] == ids[-3:]
    assert [r["id"] for r in history_json(dsn, "--last", "1")] == ids[-1:]
    assert [r["id"] for r in history_json(dsn, "--last", "100")] == ids
    assert history_json(dsn, "--last", "0") == []
    assert [r["id"] for r in history_json(dsn, "--limit", "3")] == ids[:3]  # unchanged
    alice = [r["id"] for r in history_json(dsn, "--actor", "alice")]
    assert [r["id"] for r in history_json(dsn, "--actor", "alice", "--last", "2")] == alice[-2:]
    orders = history_json(dsn, "sales.orders", "--last", "2")
    assert [(r["op"], r["pk"]) for r in orders] == [("UPDATE", {"id": 1}), ("DELETE", {"id": 2})]
    lines = ok(invoke(dsn, "history", "--last", "2", "--format", "csv")).splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in ids[-2:]]
    # Python: the same.
    assert [c["id"] for c in audited_shop.history(last=3)] == ids[-3:]
    assert [c["id"] for c in audited_shop.history(actor="bob", last=1)] == ids[-1:]

    for args in (("--last", "2", "--limit", "2"), ("--limit", "0", "--last", "1")):
        result = run_cli("--dsn", dsn, "history", *args)
        assert result.returncode == 2 and result.stdout == ""
        assert "Traceback" not in result.stderr
        assert "--limit and --last cannot be combined" in result.stderr
        assert "oldest" in result.stderr and "most recent" in result.stderr
    result = run_cli("--dsn", dsn, "history", "--last", "-1")
    assert result.returncode == 2 and "--last" in result.stderr
    with pytest.raises(InvalidInput, match="--limit and --last cannot be combined"):
        list(audited_shop.history(limit=1, last=1))
    with pytest.raises(InvalidInput, match="--last must be zero or more"):
        list(audited_shop.history(last=-1))


# --------------------------------------------------------------------------- errors


#: Bad input for the commands: (arguments, exit code, fragments of the error message).
BAD_INPUT = [
    (("enable", "sales.nope"), EXIT_BAD_INPUT, ("sales.nope", "does not exist")),
    (("enable", "misc.keyless"), EXIT_BAD_INPUT, ("misc.keyless", "primary key")),
    (("enable", "misc.orders_view"), EXIT_BAD_INPUT, ("misc.orders_view", "not a table")),
    (("enable", "a.b.c.d"), EXIT_BAD_INPUT, ("a.b.c.d",)),
    (("enable", 'sales."unterminated'), EXIT_BAD_INPUT, ()),
    (("enable",), EXIT_BAD_INPUT, ("no table",)),
    (("enable", "--schema", "nope"), EXIT_BAD_INPUT, ("nope",)),
    (("enable", "sales.orders", "--exclude", "nope"), EXIT_BAD_INPUT, ("nope",)),
    (("enable", "sales.orders", "--exclude", "id"), EXIT_BAD_INPUT, ("key",)),
    (("disable", "sales.nope"), EXIT_BAD_INPUT, ("does not exist",)),
    (("refresh", "sales.orders"), EXIT_BAD_INPUT, ("not audited",)),
    (("history", "sales.nope"), EXIT_BAD_INPUT, ("does not exist",)),
    (("history", "--pk", "1"), EXIT_BAD_INPUT, ("needs a table",)),
    (("history", "sales.orders", "--pk", "1"), EXIT_BAD_INPUT, ("not audited",)),
    (("history", "--since", "not a time"), EXIT_BAD_INPUT, ("not a time",)),
    (("history", "--until", "2024-13-45"), EXIT_BAD_INPUT, ()),
]


def test_bad_input_is_one_clean_error(shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    """Each bad input in turn, on one database: one clean error, its exit code, nothing changed."""
    for args, code, fragments in BAD_INPUT:
        try:
            failed(invoke(dsn, *args), code, *fragments)
            assert registered(conn) == 0
            assert capture_triggers(conn) == 0
            assert (
                _count(conn, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'capture\\_%'") == 0
            )
        except AssertionError as exc:
            raise AssertionError(f"pgaudit-tool {' '.join(args)}: {exc}") from None
    # The installed command, in a process of its own, exits the same way.
    args, code, fragments = BAD_INPUT[0]
    failed(run_cli("--dsn", dsn, *args), code, *fragments)


def test_usage_errors_are_clicks(dsn: str) -> None:
    result = run_cli("--dsn", dsn, "history", "--txid", "abc")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "--txid" in result.stderr
    result = run_cli("--dsn", dsn, "history", "--format", "xml")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_schema_not_installed(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    for args in (("enable", "t"), ("disable", "t"), ("refresh", "t"), ("status",), ("history",)):
        failed(run_cli("--dsn", dsn, *args), EXIT_NOT_INSTALLED, "not installed", "install")
    assert not has_schema(conn, "audit")
    assert capture_triggers(conn) == 0


def test_lock_timeout_changes_nothing(shop: Audit, dsn: str, conn: psycopg.Connection[Any]) -> None:
    """A transaction holding the table: enable gives up after --lock-timeout, changing nothing,
    instead of queueing every later query on the table behind its lock request."""
    with psycopg.connect(dsn) as holder:
        holder.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")  # open transaction
        result = invoke(dsn, "--lock-timeout", "200ms", "enable", "sales.orders")
        err = failed(
            result, EXIT_LOCK_TIMEOUT, "lock timeout", "nothing was changed", "--lock-timeout"
        )
        assert status_json(dsn) == {}
        assert capture_triggers(conn) == 0
    ok(invoke(dsn, "enable", "sales.orders"))  # the holder has committed
    assert "Traceback" not in err and status_json(dsn)["sales.orders"]["state"] == "ok"


def test_lock_timeout_setting(shop: Audit, dsn: str) -> None:
    """The lock timeout applies to write transactions only (SET LOCAL), never to the session: a
    session setting would leak into other clients' sessions behind a transaction pooler."""

    def setting(audit: Audit) -> tuple[str, str]:
        with write_transaction(audit.conn):
            inside = audit.conn.execute("SHOW lock_timeout").fetchone()
        outside = audit.conn.execute("SHOW lock_timeout").fetchone()
        assert inside is not None and outside is not None
        return str(inside[0]), str(outside[0])

    with Audit.connect(dsn) as audit:
        assert setting(audit) == ("5s", "0")  # the default
    with Audit.connect(dsn, lock_timeout="0") as audit:
        assert setting(audit) == ("0", "0")  # no limit, when asked
    with Audit.connect(dsn, lock_timeout="2min") as audit:
        assert setting(audit) == ("2min", "0")
    with Audit.connect(f"{dsn} options='-c lock_timeout=1234ms'") as audit:
        assert setting(audit) == ("1234ms", "1234ms")  # PGOPTIONS / options set by the user win
    # A handle on a connection made elsewhere gets the same default, autocommit or not.
    for autocommit in (True, False):
        with psycopg.connect(dsn, autocommit=autocommit) as own:
            handle = Audit(own)
            assert lock_timeout_of(own) == "5s"  # found out without leaving a transaction open
            assert own.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert setting(handle)[0] == "5s"
        with psycopg.connect(f"{dsn} options='-c lock_timeout=1234ms'") as own:
            assert setting(Audit(own)) == ("1234ms", "1234ms")
    failed(invoke(dsn, "--lock-timeout", "soon", "status"), EXIT_BAD_INPUT, "lock_timeout")


def test_install_repair(dsn: str, conn: psycopg.Connection[Any]) -> None:
    ok(invoke(dsn, "install"))
    conn.execute("DROP FUNCTION audit.unsealed()")
    exists = "SELECT to_regprocedure('audit.unsealed()') IS NOT NULL"
    assert "CREATE OR REPLACE FUNCTION audit.unsealed()" in ok(
        invoke(dsn, "install", "--repair", "--dry-run")
    )
    assert conn.execute(exists).fetchone() == (False,)
    result = invoke(dsn, "install", "--repair")
    assert ok(result) == "" and "re-applied" in result.stderr
    assert conn.execute(exists).fetchone() == (True,)


def test_schema_newer_than_the_tool(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """A database a newer pgaudit_tool upgraded: every command refuses, install changes nothing."""
    assert run_cli("--dsn", dsn, "install").returncode == 0
    conn.execute("UPDATE audit.schema_version SET version_num = '0999'")
    for args in (("status",), ("history",), ("install",), ("install", "--dry-run")):
        failed(run_cli("--dsn", dsn, *args), EXIT_NOT_INSTALLED, "0999, newer than this tool")
    assert conn.execute("SELECT version_num FROM audit.schema_version").fetchone() == ("0999",)


def test_cannot_connect(closed_port: int) -> None:
    secret = "Sup3r-s3cret"
    for dsn in (
        f"host=127.0.0.1 port={closed_port} dbname=x user=u password={secret} connect_timeout=5",
        f"postgresql://u:{secret}@127.0.0.1:{closed_port}/x?connect_timeout=5",
    ):
        for args in (("install",), ("status",), ("history", "--format", "json")):
            err = failed(run_cli("--dsn", dsn, *args), EXIT_CONNECT, "could not connect")
            assert secret not in err
    failed(run_cli("--dsn", "host='unterminated", "status"), EXIT_CONNECT)


def test_permission_denied(
    shop: Audit,
    pg_server: PgServer,
    dsn: str,
    conn: psycopg.Connection[Any],
    make_role: Callable[..., str],
) -> None:
    role = make_role("intruder")
    as_role = pg_server.dsn_for(str(conninfo_to_dict(dsn)["dbname"]), user=role)
    failed(
        run_cli("--dsn", as_role, "enable", "sales.orders"), EXIT_PERMISSION, "permission denied"
    )
    # With read access to the schemas it gets further, and still may not audit others' tables.
    conn.execute(
        sql.SQL(
            "GRANT USAGE ON SCHEMA audit, sales TO {r}; GRANT SELECT ON audit.schema_version TO {r}"
        ).format(r=sql.Identifier(role))
    )
    failed(
        run_cli("--dsn", as_role, "enable", "sales.orders"), EXIT_PERMISSION, "permission denied"
    )
    failed(run_cli("--dsn", as_role, "history"), EXIT_PERMISSION, "permission denied")
    assert registered(conn) == 0
    assert capture_triggers(conn) == 0


# --------------------------------------------------------------------------- closed pipe, Ctrl-C

EXIT_INTERRUPTED = 130


def _poll(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Call ``check`` until it returns something true (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_closed_pipe_ends_quietly(
    audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any], tmp_path: Path, fmt: str
) -> None:
    """``pgaudit-tool history | head -1``: the reader leaves early; exit 0, nothing on stderr,
    as ``git log | head``."""
    conn.execute(
        "INSERT INTO sales.orders SELECT g, 'customer ' || g, g, NULL"
        " FROM generate_series(1, 5000) AS g"  # far more output than a pipe buffers
    )
    proc = subprocess.Popen(
        [PGAUDIT_TOOL, "--dsn", dsn, "history", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_clean_env(tmp_path),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()
        proc.stdout.close()  # as head does after its line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err == ""


@pytest.mark.parametrize(
    ("args", "locked"),
    [
        (("history",), "audit.change"),  # a read
        (("disable", "sales.orders"), "sales.orders"),  # a write transaction
    ],
    ids=["read", "write"],
)
def test_ctrl_c_cancels_the_query(
    audited_shop: Audit,
    dsn: str,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    args: tuple[str, ...],
    locked: str,
) -> None:
    """SIGINT while the server runs the command's query (here: waits for a lock another session
    holds): the query is cancelled, one line on stderr says nothing was changed, exit 130."""
    app = "pgaudit-tool-interrupted"
    sessions = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s"
    )
    command = [PGAUDIT_TOOL, "--dsn", make_conninfo(dsn, application_name=app)]
    with psycopg.connect(dsn) as holder:  # its transaction keeps the lock until the end
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(*locked.split("."))
            )
        )
        proc = subprocess.Popen(
            [*command, "--lock-timeout", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(tmp_path),
            # A test run started in the background (nohup, `cmd &`) ignores SIGINT, and the
            # child would inherit that: give it the default a terminal's user has.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _poll(
                lambda: _count(conn, sessions + " AND wait_event_type = 'Lock'", (app,)),
                "the command to wait for the lock",
            )
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == EXIT_INTERRUPTED, err
        assert (out, err) == ("", "interrupted: nothing was changed\n")
        # Cancelled: with the lock still held, no session of the command is left waiting for
        # it (closing the connection alone would leave the query queued for the lock).
        _poll(lambda: _count(conn, sessions, (app,)) == 0, "the command's session to end")
    assert status_json(dsn)["sales.orders"]["enabled"] is True


def test_ctrl_c_says_what_was_committed(
    shop: Audit, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted before its transaction commits, a write command changed nothing; after, it
    says so instead."""

    def interrupt(*_args: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tables, "unsuitable_tables", interrupt)  # before enable's transaction
        result = invoke(dsn, "enable", "sales.orders")
    assert (result.exit_code, result.stdout) == (EXIT_INTERRUPTED, "")
    assert result.stderr == "interrupted: nothing was changed\n"
    assert status_json(dsn) == {}
    with monkeypatch.context() as patch:
        patch.setattr(tables, "status", interrupt)  # after it committed
        result = invoke(dsn, "enable", "sales.orders")
    assert (result.exit_code, result.stdout) == (EXIT_INTERRUPTED, "")
    assert result.stderr == "interrupted after changes were committed\n"
    assert status_json(dsn)["sales.orders"]["enabled"] is True


# --------------------------------------------------------------------------- confirmation

CONFIRMING = (
    "doctor",
    "reattach",
    "revert",
    "archive",
    "retention",
)  # the commands that ask before changing anything


def test_every_confirming_command_takes_yes() -> None:
    """One shared -y/--yes on every command that asks for confirmation."""
    import inspect

    asking = {
        name
        for name, command in main.commands.items()
        if command.callback is not None
        and any(
            f"{f}(" in inspect.getsource(command.callback) for f in ("_confirm", "_confirm_drop")
        )
    }
    assert asking == set(CONFIRMING)
    options = [
        next(p for p in main.commands[name].params if p.name == "yes") for name in CONFIRMING
    ]
    for option in options:
        assert isinstance(option, click.Option) and option.is_flag
        assert sorted(option.opts) == ["--yes", "-y"]
        assert option.help == options[0].help


@pytest.mark.parametrize("yes", ["-y", "--yes"])
def test_yes_confirms_without_a_terminal(
    audited_shop: Audit, dsn: str, conn: psycopg.Connection[Any], yes: str
) -> None:
    conn.execute("ALTER TABLE sales.orders ENABLE TRIGGER pgaudit_update")  # not ALWAYS
    assert invoke(dsn, "doctor").exit_code == 7
    refused = invoke(dsn, "doctor", "--fix")  # no terminal to ask on
    assert refused.exit_code == EXIT_BAD_INPUT and "hint: Pass --yes." in refused.stderr
    assert invoke(dsn, "doctor").exit_code == 7
    fixed = invoke(dsn, "doctor", "--fix", yes)
    assert fixed.exit_code == 0, fixed.output
    assert "applied" in fixed.stderr
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
    (change,) = history_json(dsn, "sales.orders")
    refused = invoke(dsn, "revert", "--change", str(change["id"]))
    assert refused.exit_code == EXIT_BAD_INPUT and "hint: Pass --yes." in refused.stderr
    assert _count(conn, "SELECT count(*) FROM sales.orders") == 1
    ok(invoke(dsn, "revert", "--change", str(change["id"]), yes))
    assert _count(conn, "SELECT count(*) FROM sales.orders") == 0


def test_ctrl_c_at_the_question(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at a confirmation question is an interruption (exit 130), a "no" an abort."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def ctrl_c(_prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(click.termui, "visible_prompt_func", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _confirm("Apply?", yes=False)
    monkeypatch.setattr(click.termui, "visible_prompt_func", lambda _prompt="": "n")
    with pytest.raises(click.Abort):
        _confirm("Apply?", yes=False)
    _confirm("Apply?", yes=True)  # not asked


# --------------------------------------------------------------------------- connection rules


@pytest.fixture
def probe(audit: Audit, dsn: str) -> dict[str, str]:
    """A database whose status lists public.conn_probe; returns its connection parameters."""
    audit.conn.execute("CREATE TABLE conn_probe (id int PRIMARY KEY)")
    audit.enable("conn_probe")
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    return params


def _reaches_probe(result: subprocess.CompletedProcess[str]) -> None:
    records = json.loads(ok(result))
    assert [r["table"] for r in records] == ["public.conn_probe"]


def test_dsn_forms(probe: dict[str, str], tmp_path: Path, closed_port: int) -> None:
    host, port, user, db = probe["host"], probe["port"], probe["user"], probe["dbname"]
    decoy = {"PGPORT": str(closed_port), "DATABASE_URL": f"postgresql://127.0.0.1:{closed_port}/x"}
    forms = (
        f"host={host} port={port} user={user} dbname={db}",
        f"postgresql://{user}@{host}:{port}/{db}",
        f"postgres://{user}@{host}:{port}/{db}",
        f"postgresql+psycopg://{user}@{host}:{port}/{db}",
    )
    for form in forms:
        _reaches_probe(run_cli("--dsn", form, "status", "--format", "json", home=tmp_path))
    # --dsn wins over the PG* variables and DATABASE_URL.
    for form in (forms[0], forms[-1]):
        _reaches_probe(
            run_cli("--dsn", form, "status", "--format", "json", env=decoy, home=tmp_path)
        )


def test_libpq_environment(probe: dict[str, str], tmp_path: Path, closed_port: int) -> None:
    env = {
        "PGHOST": probe["host"],
        "PGPORT": probe["port"],
        "PGUSER": probe["user"],
        "PGDATABASE": probe["dbname"],
    }
    _reaches_probe(run_cli("status", "--format", "json", env=env, home=tmp_path))
    # PG* variables win over DATABASE_URL.
    env["DATABASE_URL"] = f"postgresql://nobody@127.0.0.1:{closed_port}/nowhere"
    _reaches_probe(run_cli("status", "--format", "json", env=env, home=tmp_path))


def test_database_url_fallback(probe: dict[str, str], tmp_path: Path) -> None:
    host, port, user, db = probe["host"], probe["port"], probe["user"], probe["dbname"]
    for url in (
        f"postgresql://{user}@{host}:{port}/{db}",
        f"postgresql+psycopg://{user}@{host}:{port}/{db}",
    ):
        result = run_cli("status", "--format", "json", env={"DATABASE_URL": url}, home=tmp_path)
        _reaches_probe(result)


def test_service_file(probe: dict[str, str], tmp_path: Path) -> None:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(
        "[audit_probe]\n"
        f"host={probe['host']}\nport={probe['port']}\n"
        f"user={probe['user']}\ndbname={probe['dbname']}\n"
    )
    env = {"PGSERVICEFILE": str(service_file), "PGSERVICE": "audit_probe"}
    _reaches_probe(run_cli("status", "--format", "json", env=env, home=tmp_path))
    only_file = {"PGSERVICEFILE": str(service_file)}
    _reaches_probe(
        run_cli(
            "--dsn",
            "service=audit_probe",
            "status",
            "--format",
            "json",
            env=only_file,
            home=tmp_path,
        )
    )
    failed(
        run_cli("status", env={**only_file, "PGSERVICE": "missing"}, home=tmp_path),
        EXIT_CONNECT,
        "missing",
    )


def _reload_and_wait(admin_dsn: str, probe_dsn: str, *, password_required: bool) -> None:
    """pg_reload_conf(), then wait until a password-less login as the probe role is (not) refused."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 15
    while True:
        try:
            psycopg.connect(probe_dsn, connect_timeout=5).close()
            refused = False
        except psycopg.OperationalError:
            refused = True
        if refused == password_required:
            return
        assert time.monotonic() < deadline, "pg_hba.conf reload did not take effect"
        time.sleep(0.1)


@contextmanager
def _password_auth_for(pg_server: PgServer, dbname: str, role: str) -> Iterator[None]:
    """Make ``role`` log in with scram-sha-256 over TCP on our throwaway cluster only.

    Our clusters use trust authentication for everything, under which .pgpass is never read.
    """
    if pg_server.cluster is None:
        pytest.skip("not our own cluster: its pg_hba.conf is not ours to change")
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        row = admin.execute("SHOW hba_file").fetchone()
    assert row is not None
    hba = Path(row[0])
    if not os.access(hba, os.W_OK):
        pytest.skip(f"{hba} is not writable: cannot require a password to prove .pgpass")
    original = hba.read_text()
    no_password = make_conninfo(
        pg_server.dsn_for(dbname, user=role), passfile=str(hba.with_name("no-such-pgpass"))
    )
    hba.write_text(f'host all "{role}" 127.0.0.1/32 scram-sha-256\n{original}')
    try:
        _reload_and_wait(pg_server.admin_dsn, no_password, password_required=True)
        yield
    finally:
        hba.write_text(original)
        _reload_and_wait(pg_server.admin_dsn, no_password, password_required=False)


def test_pgpass(
    pg_server: PgServer,
    dsn: str,
    conn: psycopg.Connection[Any],
    make_role: Callable[..., str],
    tmp_path: Path,
) -> None:
    role = make_role("pgpass")
    password = "pgpass-Pw-42"
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
    )
    params = conninfo_to_dict(dsn)
    host, port, db = params["host"], params["port"], params["dbname"]
    as_role = pg_server.dsn_for(str(db), user=role)  # no password in it
    good = tmp_path / "pgpass"
    good.write_text(f"{host}:{port}:{db}:{role}:{password}\n")
    good.chmod(0o600)
    wrong = tmp_path / "pgpass-wrong"
    wrong.write_text(f"{host}:{port}:*:{role}:not-the-password\n")
    wrong.chmod(0o600)

    with _password_auth_for(pg_server, str(db), role):
        failed(
            run_cli("--dsn", as_role, "install", "--dry-run", home=tmp_path),
            EXIT_CONNECT,
            "password",
        )
        err = failed(
            run_cli("--dsn", as_role, "install", "--dry-run", env={"PGPASSFILE": str(wrong)}),
            EXIT_CONNECT,
            "password authentication failed",
        )
        assert "not-the-password" not in err
        # The password comes from the file named by PGPASSFILE, and from ~/.pgpass.
        script = ok(
            run_cli("--dsn", as_role, "install", "--dry-run", env={"PGPASSFILE": str(good)})
        )
        assert "CREATE TABLE audit.change" in script
        (tmp_path / ".pgpass").write_bytes(good.read_bytes())
        (tmp_path / ".pgpass").chmod(0o600)
        script = ok(run_cli("--dsn", as_role, "install", "--dry-run", home=tmp_path))
        assert "CREATE TABLE audit.change" in script


# --------------------------------------------------------------------------- help, demo


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    text = ok(result)
    listed = text.split("Commands:", 1)[1].split("Exit codes:", 1)[0]
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == set(COMMANDS)
    assert "Exit codes:" in text
    for code in range(6):
        assert f"  {code}  " in text
    assert ok(run_cli("--version")).strip().endswith("0.1.0")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], prog_name="pgaudit-tool")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"Usage: pgaudit-tool {command} ")
    description = main.commands[command].help
    assert description and len(description.strip()) > 20
    first_sentence = " ".join(description.split())[:40]
    assert first_sentence in " ".join(text.split())
    options = [main] + ([] if command not in main.commands else [main.commands[command]])
    silent = [
        p.name for c in options for p in c.params if isinstance(p, click.Option) and not p.help
    ]
    assert silent == [], f"options without help text: {silent}"
    assert CliRunner().invoke(main, [command, "-?"]).exit_code == 0


def test_readme_documents_every_command_and_exit_code() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert f"| `{command}" in readme, f"README.md: no row for {command!r} in the CLI table"
    for code in range(6):
        assert f"{code} " in readme.split("**Exit codes**", 1)[1][:800]


def test_demo(dsn: str, conn: psycopg.Connection[Any]) -> None:
    result = run_cli("--dsn", dsn, "demo", "--format", "json")
    records = json.loads(ok(result))  # stdout is the JSON array alone
    assert isinstance(records, list) and records
    assert {r["actor"] for r in records} == {"alice", "bob"}
    assert {r["op"] for r in records} == {"INSERT", "UPDATE", "DELETE"}
    assert all(r["table"].startswith("pgaudit_demo.") for r in records)
    assert all("password_hash" not in (r["new"] or {}) for r in records)
    assert "alice" in result.stderr  # progress messages go to stderr
    assert not has_schema(conn, "pgaudit_demo")
    table = ok(run_cli("--dsn", dsn, "demo"))  # as history shows it: each change in view
    assert table.splitlines()[0].split()[0] == "id" and "quantity: 2 -> 3" in table.replace('"', "")

    # An existing pgaudit_demo schema is refused and left alone.
    conn.execute("CREATE SCHEMA pgaudit_demo; CREATE TABLE pgaudit_demo.mine (id int)")
    failed(run_cli("--dsn", dsn, "demo"), EXIT_BAD_INPUT, "pgaudit_demo")
    assert _count(conn, "SELECT count(*) FROM pgaudit_demo.mine") == 0
