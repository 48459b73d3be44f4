"""What a writer or a user can feed the tool must end in output or a clear error, never a crash.

Deeply nested and wide JSON in row images and the application context, unusable times, keys
the key column cannot hold, --into targets in reserved schemas, a held install lock, and the
privileges of ordinary roles and pgaudit_reader.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.cli import main
from pgaudit_tool.errors import AuditError, InvalidInput
from pgaudit_tool.jsonsafe import MAX_DEPTH, RawJson, depth, loads
from pgaudit_tool.output import FORMATS, render, to_json_text
from tests.conftest import PgServer

Conn = psycopg.Connection[Any]
FORMATS_ALL = list(FORMATS)


def cli(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--dsn", dsn, *args])


def assert_clean_failure(result: Result, code: int, *words: str) -> None:
    """Exit ``code``, one error message naming ``words``, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
    assert result.stdout == ""


@contextmanager
def deep_recursion_allowed() -> Iterator[None]:
    """Let the test itself parse very deep JSON (the tool never needs this)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 250_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def nested(n: int) -> str:
    return "[" * n + "]" * n


def nested_object(n: int) -> str:
    return '{"a": ' * n + "1" + "}" * n


# --------------------------------------------------------------------------- JSON decoding


@pytest.mark.parametrize("n", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000, 100_000])
def test_loads_decodes_any_depth_without_recursion(n: int) -> None:
    text = '{"id": 1, "s": "[[{{\\"", "n": 1.50, "deep": ' + nested(n) + ', "w": [1, {"x": 2}]}'
    value = loads(text)
    assert value["id"] == 1 and value["s"] == '[[{{"' and str(value["n"]) == "1.50"
    assert value["w"] == [1, {"x": 2}]
    if n <= MAX_DEPTH:
        assert not isinstance(value["deep"], RawJson)
    else:
        assert value["deep"] == RawJson(nested(n))
    assert depth(text) == n + 1
    # Written back verbatim (to PostgreSQL's own spelling), whatever the format.
    assert to_json_text(value).replace(" ", "") == text.replace(" ", "")


def test_loads_splits_deep_arrays_and_keeps_raw_text_on_one_line() -> None:
    assert loads("[" + nested(500) + ", 2]") == [RawJson(nested(500)), 2]
    raw = loads('{"j": [\n' + nested(300) + "\n]}")["j"]  # a json column keeps line breaks
    assert isinstance(raw, RawJson) and "\n" not in raw.text and json.loads(raw.text)


@pytest.mark.parametrize("fmt", FORMATS_ALL)
def test_every_format_writes_raw_json_verbatim(fmt: str) -> None:
    deep = nested(5000)
    out = io.StringIO()
    render([{"id": 1, "new": {"deep": RawJson(deep), "n": 1}}], fmt, out)
    text = out.getvalue()
    if fmt == "table":
        assert "[[[[" in text and "(1 row)" in text
    else:
        assert deep in text
    if fmt in ("json", "jsonl"):
        with deep_recursion_allowed():
            parsed = json.loads(text)
        record = parsed[0] if fmt == "json" else parsed
        assert record["new"]["n"] == 1


def test_too_deep_python_values_are_refused_cleanly() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(InvalidInput, match="nested too deeply"):
        to_json_text(value)


# --------------------------------------------------------------------------- review commands


@pytest.fixture
def deep_log(audit: Audit, dsn: str) -> Callable[[int], dict[str, Any]]:
    """Make a writer store JSON nested ``n`` deep in a jsonb column, a json column and the
    application context; return what the review commands are asked about."""
    audit.conn.execute("CREATE TABLE public.doc (id int PRIMARY KEY, body jsonb, j json, v int)")
    audit.enable("public.doc")

    def write(n: int) -> dict[str, Any]:
        since = audit.conn.execute("SELECT now()").fetchone()
        assert since is not None
        with psycopg.connect(dsn, autocommit=True) as writer, writer.transaction():
            writer.execute("SELECT set_config('pgaudit.actor', 'mallory', true)")
            context = '{"k": ' + nested_object(n) + "}"
            writer.execute("SELECT set_config('pgaudit.context', %s, true)", (context,))
            body = '{"d": ' + nested(n) + ', "x": 1.50}'
            writer.execute("INSERT INTO public.doc VALUES (%s, %s, %s, 1)", (n, body, nested(n)))
            writer.execute("UPDATE public.doc SET body = %s, v = 2 WHERE id = %s", (nested(n), n))
            row = writer.execute("SELECT pg_current_xact_id()::text, now()").fetchone()
        assert row is not None
        return {"txid": row[0], "since": since[0].isoformat()}

    return write


@pytest.mark.parametrize("n", [1000, 10_000])
def test_review_commands_read_deeply_nested_json(
    audit: Audit, dsn: str, deep_log: Callable[[int], dict[str, Any]], n: int
) -> None:
    info = deep_log(n)
    key = str(n)
    commands = [
        ["history", "public.doc"],
        ["history"],
        ["transaction", info["txid"]],
        ["blame", "public.doc", "--pk", key],
        ["table-at", "public.doc", "--at", "now"],
        ["diff", "public.doc", "--from", info["since"]],
    ]
    for command in commands:
        for fmt in FORMATS_ALL:
            result = cli(dsn, *command, "--format", fmt)
            assert result.exit_code == 0, (command, fmt, result.stderr)
            assert "Traceback" not in result.stderr
            if fmt == "table":
                continue
            assert nested(n) in result.stdout.replace(" ", ""), (command, fmt)
            if fmt in ("json", "jsonl"):
                with deep_recursion_allowed():
                    for line in result.stdout.splitlines() if fmt == "jsonl" else [result.stdout]:
                        json.loads(line)
    row_at = cli(dsn, "row-at", "public.doc", "--pk", key, "--at", "now")
    assert row_at.exit_code == 0, row_at.stderr
    with deep_recursion_allowed():
        expected = {"id": n, "body": json.loads(nested(n)), "j": json.loads(nested(n)), "v": 2}
        assert json.loads(row_at.stdout) == expected

    # The Python API: the same records, deep members kept as RawJson, shallow ones decoded.
    changes = list(audit.history("public.doc"))
    assert [c["op"] for c in changes] == ["INSERT", "UPDATE"]
    first = changes[0]
    # A row image is decoded at its top level: each column nested too deeply stays raw text.
    assert first["new"]["id"] == n and first["new"]["v"] == 1
    body = first["new"]["body"]
    assert isinstance(body, RawJson) and body.text == '{"d": ' + nested(n) + ', "x": 1.50}'
    assert first["new"]["j"] == RawJson(nested(n))
    context = first["context"]["k"]
    assert isinstance(context, RawJson) and context.text.replace(" ", "") == nested_object(
        n
    ).replace(" ", "")
    assert first["actor"] == "mallory"
    assert changes[1]["changed"] == ["body", "v"]
    assert audit.transaction(int(info["txid"]))[0]["id"] == first["id"]
    assert audit.row_at("public.doc", n, "now") is not None
    assert sorted(r["column_name"] for r in audit.blame("public.doc", n)) == [
        "body",
        "id",
        "j",
        "v",
    ]
    assert len(list(audit.table_at("public.doc", "now"))) == 1
    assert len(list(audit.diff("public.doc", info["since"]))) == 1


def test_postgresql_refuses_jsonb_deeper_than_its_stack(audit: Audit) -> None:
    """How deep a writer can go is PostgreSQL's limit (max_stack_depth): 100,000 levels are
    refused with the server's error, before anything reaches the table or the log."""
    audit.conn.execute("CREATE TABLE public.doc (id int PRIMARY KEY, body jsonb)")
    audit.enable("public.doc")
    with pytest.raises(psycopg.errors.StatementTooComplex):
        audit.conn.execute("INSERT INTO public.doc VALUES (1, %s)", (nested(100_000),))
    assert list(audit.history("public.doc")) == []


def test_review_commands_read_wide_values(audit: Audit, dsn: str) -> None:
    audit.conn.execute("CREATE TABLE public.doc (id int PRIMARY KEY, body jsonb, t text)")
    audit.enable("public.doc")
    wide_array = [[i, {"k": i}] for i in range(50_000)]
    wide_object = {f"key{i}": [i] for i in range(20_000)}
    long_text = "[{" * 500_000
    audit.conn.execute(
        "INSERT INTO public.doc VALUES (1, %s, %s), (2, %s, NULL)",
        (json.dumps(wide_array), long_text, json.dumps(wide_object)),
    )
    (change_1, change_2) = list(audit.history("public.doc"))
    assert change_1["new"]["body"] == wide_array and change_1["new"]["t"] == long_text
    assert change_2["new"]["body"] == wide_object
    for fmt in ("json", "jsonl", "csv"):
        result = cli(dsn, "history", "public.doc", "--format", fmt)
        assert result.exit_code == 0, result.stderr
        assert long_text in result.stdout
    result = cli(dsn, "table-at", "public.doc", "--at", "now", "--format", "json")
    assert [r["body"] for r in json.loads(result.stdout)] == [wide_array, wide_object]


# --------------------------------------------------------------------------- small defects


@pytest.fixture
def orders(audit: Audit) -> Audit:
    audit.conn.execute(
        "CREATE TABLE public.orders (id int PRIMARY KEY, amount int);"
        "CREATE TABLE public.lines (o smallint, d date, code varchar(3), amount numeric(4, 2),"
        " PRIMARY KEY (o, d, code, amount))"
    )
    audit.enable("public.orders", "public.lines")
    audit.conn.execute("INSERT INTO public.orders VALUES (1, 10)")
    audit.conn.execute("UPDATE public.orders SET amount = 11")
    return audit


def log_size(conn: Conn) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM audit.change), (SELECT count(*) FROM pg_class)"
    ).fetchone()
    assert row is not None
    return tuple(row)


UNUSABLE_TIMES = [
    "infinity",
    "-infinity",
    "  Infinity ",
    "4713-01-01 BC",
    "0001-01-01 00:00:00+14",
    "10000-01-01",
    "1000000 years ago",
    "99999999999999999 hours ago",
    "not a time",
]


def time_commands(at: str) -> list[list[str]]:
    """Every place a time is accepted."""
    return [
        ["history", "--since", at],
        ["history", "--until", at],
        ["row-at", "public.orders", "--pk", "1", "--at", at],
        ["table-at", "public.orders", "--at", at],
        ["table-at", "public.orders", "--at", at, "--into", "public.snap"],
        ["diff", "public.orders", "--from", at],
        ["diff", "public.orders", "--from", "1 hour ago", "--to", at],
        ["revert", "--actor", "x", "--since", at, "--dry-run"],
        ["revert", "--actor", "x", "--since", "1 hour ago", "--until", at, "--dry-run"],
        ["revert", "--table", "public.orders", "--to", at, "--dry-run"],
    ]


@pytest.mark.parametrize("at", UNUSABLE_TIMES)
def test_unusable_times_are_refused_everywhere(orders: Audit, dsn: str, at: str) -> None:
    before = log_size(orders.conn)
    for command in time_commands(at):
        result = cli(dsn, *command)
        assert_clean_failure(result, 2, repr(at))
        assert "None" not in result.stderr
    assert log_size(orders.conn) == before
    for call in (
        lambda: orders.instant(at),
        lambda: list(orders.history(since=at)),
        lambda: orders.row_at("public.orders", 1, at),
    ):
        with pytest.raises(InvalidInput, match="not a (usable )?time"):
            call()


def test_usable_extreme_times_still_work(orders: Audit, dsn: str) -> None:
    assert (
        cli(dsn, "history", "--since", "0001-01-02 00:00:00+00", "--format", "csv").exit_code == 0
    )
    result = cli(dsn, "history", "--until", "9999-12-29", "--format", "jsonl")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


BAD_KEYS = [
    ("public.orders", "99999999999999999999"),
    ("public.orders", '{"id": 99999999999999999999}'),
    ("public.orders", '{"id": 1e400}'),
    ("public.orders", "1.5"),
    ("public.orders", "abc"),
    ("public.lines", '{"o": 70000, "d": "2020-01-01", "code": "abc", "amount": 1}'),
    ("public.lines", '{"o": 1, "d": "2020-02-30", "code": "abc", "amount": 1}'),
    ("public.lines", '{"o": 1, "d": "2020-01-01", "code": "abcd", "amount": 1}'),
    ("public.lines", '{"o": 1, "d": "2020-01-01", "code": "abc", "amount": 100}'),
    ("public.orders", nested(100_000)),
]


@pytest.mark.parametrize(("table", "key"), BAD_KEYS, ids=[k[:30] for _, k in BAD_KEYS])
def test_keys_the_key_columns_cannot_hold_are_invalid_input(
    orders: Audit, dsn: str, table: str, key: str
) -> None:
    before = log_size(orders.conn)
    for command in (
        ["history", table, "--pk", key],
        ["blame", table, "--pk", key],
        ["row-at", table, "--pk", key, "--at", "now"],
        ["revert", "--table", table, "--pk", key, "--to", "1 hour ago", "--yes"],
    ):
        assert_clean_failure(cli(dsn, *command), 2)
    with pytest.raises(InvalidInput):
        list(orders.history(table, pk=key))
    assert log_size(orders.conn) == before


@pytest.mark.parametrize(
    "target",
    [
        "audit.x",
        "AUDIT.x",
        '"audit".x',
        "pg_catalog.x",
        "information_schema.x",
        "pg_toast.x",
        "pg_whatever.x",
    ],
)
def test_table_at_into_refuses_the_audit_and_system_schemas(
    orders: Audit, dsn: str, target: str
) -> None:
    before = log_size(orders.conn)
    result = cli(dsn, "table-at", "public.orders", "--at", "now", "--into", target)
    assert_clean_failure(result, 2, "nothing was created")
    assert log_size(orders.conn) == before
    with pytest.raises(InvalidInput):
        orders.table_at_into("public.orders", "now", target)


def test_table_at_into_refuses_an_unqualified_name_that_lands_in_audit(
    orders: Audit, dsn: str
) -> None:
    orders.conn.execute("SET search_path = audit, public")
    with pytest.raises(InvalidInput, match="audit"):
        orders.table_at_into("public.orders", "now", "snap")
    orders.conn.execute("SET search_path = public")
    assert orders.table_at_into("public.orders", "now", "snap") == 1
    assert orders.table_at_into("public.orders", "now", "pg_temp.snap2") == 1


def test_install_behind_a_held_advisory_lock_fails_with_exit_8(
    audit: Audit, pg_server: PgServer, dsn: str, make_role: Callable[..., str]
) -> None:
    """Any role can take the install lock (advisory locks need no privilege): install then
    fails after the lock timeout, clearly, with nothing changed."""
    from pgaudit_tool.schema import _INSTALL_LOCK_KEY

    nobody = make_role("nobody")
    with psycopg.connect(
        pg_server.dsn_for(audit.conn.info.dbname, user=nobody), autocommit=True
    ) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_INSTALL_LOCK_KEY,))
        for args in (["install"], ["install", "--repair"]):
            result = cli(dsn, "--lock-timeout", "300ms", *args)
            assert_clean_failure(result, 8, "advisory lock", "another install")
            assert "pg_locks" in result.stderr
        from pgaudit_tool.errors import LockTimeout

        with Audit.connect(dsn, lock_timeout="200ms") as other, pytest.raises(LockTimeout):
            other.install(repair=True)
        holder.execute("SELECT pg_advisory_unlock(%s)", (_INSTALL_LOCK_KEY,))
    assert cli(dsn, "install", "--repair").exit_code == 0


# --------------------------------------------------------------------------- privileges


@pytest.fixture
def roles(
    orders: Audit, pg_server: PgServer, make_role: Callable[..., str]
) -> Iterator[tuple[Audit, Conn, str]]:
    """An ordinary application role writing an audited table, and a reviewer's DSN."""
    app = make_role("app")
    reviewer = make_role("reviewer")
    conn = orders.conn
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders TO {}").format(
            sql.Identifier(app)
        )
    )
    conn.execute(sql.SQL("GRANT pgaudit_reader TO {}").format(sql.Identifier(reviewer)))
    # blame starts from the row as it is now: it reads the audited table itself.
    conn.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(reviewer)))
    dbname = conn.info.dbname
    with psycopg.connect(pg_server.dsn_for(dbname, user=app), autocommit=True) as app_conn:
        yield orders, app_conn, pg_server.dsn_for(dbname, user=reviewer)


def test_any_role_can_name_its_actor(roles: tuple[Audit, Conn, str]) -> None:
    audit, app_conn, _ = roles
    with app_conn.transaction():
        app_conn.execute("SELECT audit.set_actor('alice', '{\"ticket\": \"OPS-7\"}')")
        app_conn.execute("UPDATE public.orders SET amount = 12")
    with app_conn.transaction():
        app_conn.execute("SELECT audit.set_actor('bob')")
        app_conn.execute("INSERT INTO public.orders VALUES (2, 20)")
    last = list(audit.history("public.orders"))[-2:]
    assert [(c["actor"], c["context"], c["db_user"]) for c in last] == [
        ("alice", {"ticket": "OPS-7"}, app_conn.info.user),
        ("bob", None, app_conn.info.user),
    ]


ORDINARY_ROLE_ATTACKS = [
    "SELECT audit.enable('public.orders')",
    "SELECT audit.disable('public.orders')",
    "SELECT audit.refresh('public.orders')",
    "SELECT * FROM audit.status()",
    "SELECT audit.track_schema('public')",
    "SELECT audit.row_at('public.orders', '{\"id\": 1}', now())",
    "SELECT * FROM audit.table_at(NULL::public.orders, now())",
    "SELECT * FROM audit.diff('public.orders', now() - interval '1 day', now())",
    "SELECT * FROM audit.blame('public.orders', '{\"id\": 1}')",
    "SELECT audit.pk('public.orders', '1')",
    "SELECT audit.changed_columns('{}', '{}')",
    "SELECT * FROM audit.revert_plan(ARRAY[1::bigint], 'abort')",
    "SELECT audit.revert('{\"changes\": [1]}', 'force', 'x')",
    "SELECT * FROM audit.verify()",
    "SELECT * FROM audit.doctor()",
    "SELECT audit.seal()",
    "SELECT audit._rewrite_all(true)",
    "SELECT audit.install_guards()",
    "SELECT * FROM audit.history",
    "SELECT * FROM audit.change",
    "SELECT * FROM audit.transaction",
    "SELECT * FROM audit.schema_version",
    "INSERT INTO audit.transaction (txid) VALUES ('1')",
    "CREATE TABLE audit.mine (id int)",
]


def test_an_ordinary_role_can_call_nothing_else(roles: tuple[Audit, Conn, str]) -> None:
    audit, app_conn, _ = roles
    before = log_size(audit.conn)
    for attack in ORDINARY_ROLE_ATTACKS:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
            app_conn.execute(attack)
    assert log_size(audit.conn) == before
    # Every function of the schema but set_actor and the revert's row count check is closed
    # to PUBLIC, new ones included.
    open_to_public = audit.conn.execute(
        "SELECT array_agg(p.proname ORDER BY p.proname) FROM pg_proc p"
        " WHERE p.pronamespace = 'audit'::regnamespace"
        " AND has_function_privilege('public', p.oid, 'EXECUTE')"
    ).fetchone()
    assert open_to_public == (["_revert_count", "set_actor"],)


def test_the_reader_can_run_every_read_command(roles: tuple[Audit, Conn, str]) -> None:
    audit, _, reviewer_dsn = roles
    txid = str(next(iter(audit.history("public.orders")))["txid"])
    enabled = max(t["history_since"] for t in audit.status()).isoformat()
    reads = [
        ["status"],
        ["history"],
        ["history", "public.orders", "--pk", "1", "--since", "1 hour ago"],
        ["transaction", txid],
        ["blame", "public.orders", "--pk", "1"],
        ["row-at", "public.orders", "--pk", "1", "--at", "now"],
        ["table-at", "public.orders", "--at", "now"],
        ["diff", "public.orders", "--from", enabled],
        ["verify"],
        ["revert", "--table", "public.orders", "--to", enabled, "--dry-run"],
        ["partitions"],
        ["hold", "--list"],
    ]
    for command in reads:
        result = cli(reviewer_dsn, *command)
        assert result.exit_code == 0, (command, result.stderr)
    doctor = cli(reviewer_dsn, "doctor")
    assert doctor.exit_code in (0, 7) and "Traceback" not in doctor.stderr, doctor.stderr
    assert "permission denied" not in doctor.stderr
    # ... and still writes nothing.
    result = cli(reviewer_dsn, "revert", "--table", "public.orders", "--to", enabled, "--yes")
    assert result.exit_code == 5 and "Traceback" not in result.stderr
    assert "error: the revert failed and changed nothing: permission denied" in result.stderr
    with psycopg.connect(reviewer_dsn, autocommit=True) as c:
        for attack in (
            "SELECT audit.seal()",
            "DELETE FROM audit.change",
            "SELECT audit.disable('public.orders')",
            "SELECT * FROM audit.maintain()",
            "SELECT audit.hold()",
            "SELECT * FROM audit.release_holds(p_all => true)",
            "SELECT * FROM audit.retire('[]')",
            "SELECT audit.set_partitioning('1 day')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(attack)


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.instant("now"),
        lambda a: a.status(),
        lambda a: list(a.history()),
        lambda a: a.doctor(),
        lambda a: a.verify(),
    ],
    ids=["instant", "status", "history", "doctor", "verify"],
)
def test_a_connection_the_server_ended_raises_audit_errors_only(
    dsn: str, conn: psycopg.Connection[Any], call: Callable[[Audit], Any]
) -> None:
    """After the server ends the session (pg_terminate_backend, a restart), every method raises
    the library's AuditError, never a raw psycopg error; so do the calls after it."""
    with Audit.connect(dsn) as audit:
        audit.install()
        pid = audit.conn.info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(2):
            with pytest.raises(AuditError) as caught:
                call(audit)
            assert not isinstance(caught.value, psycopg.Error)
