"""Capture: every operation's images and context, exactly, and the capture rules of the core."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgaudit_tool import Audit, audit_context
from pgaudit_tool.errors import InvalidInput, NotInstalled, TableNotSuitable
from tests.conftest import PgServer


def changes(conn: psycopg.Connection[Any], where: str = "true") -> list[dict[str, Any]]:
    """audit.history rows (all columns) in change order."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT * FROM audit.history WHERE {where} ORDER BY id").fetchall()


def brief(conn: psycopg.Connection[Any], where: str = "true") -> list[tuple[Any, ...]]:
    return [(c["op"], c["pk"], c["old"], c["new"]) for c in changes(conn, where)]


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


ALL_OUTPUT_SETTINGS = [
    "TimeZone=UTC",
    "DateStyle=ISO, YMD",
    "IntervalStyle=postgres",
    "extra_float_digits=1",
    "bytea_output=hex",
]


@pytest.fixture
def orders(audit: Audit) -> Audit:
    audit.conn.execute(
        "CREATE SCHEMA sales;"
        "CREATE TABLE sales.orders (id int PRIMARY KEY, customer text NOT NULL,"
        " amount numeric(10,2), password_hash text)"
    )
    audit.enable("sales.orders", exclude=["password_hash"])
    return audit


def test_images_and_context_are_exact(orders: Audit, pg_server: PgServer, dsn: str) -> None:
    tcp = psycopg.connect(dsn, autocommit=True, application_name="billing-app")
    with tcp:
        assert tcp.info.host == "127.0.0.1"
        before = datetime.now().astimezone()
        with audit_context(tcp, "alice", {"ticket": "T-1", "n": 2}):
            txid, addr, port, pid, started = tcp.execute(
                "SELECT pg_current_xact_id()::text::bigint, host(inet_client_addr()),"
                " inet_client_port(), pg_backend_pid(), now()"
            ).fetchone()  # type: ignore[misc]
            tcp.execute(
                "INSERT INTO sales.orders VALUES (1, 'ann', 10.50, 's3cret'), (2, 'bob', 7, 'x')"
            )
            tcp.execute("UPDATE sales.orders SET amount = 11.00 WHERE id = 1")
            tcp.execute("DELETE FROM sales.orders WHERE id = 2")
        after = datetime.now().astimezone()

    rows = changes(orders.conn)
    assert [(r["op"], r["pk"], r["old"], r["new"]) for r in rows] == [
        ("INSERT", {"id": 1}, None, {"id": 1, "customer": "ann", "amount": 10.50}),
        ("INSERT", {"id": 2}, None, {"id": 2, "customer": "bob", "amount": 7.00}),
        (
            "UPDATE",
            {"id": 1},
            {"id": 1, "customer": "ann", "amount": 10.50},
            {"id": 1, "customer": "ann", "amount": 11.00},
        ),
        ("DELETE", {"id": 2}, {"id": 2, "customer": "bob", "amount": 7.00}, None),
    ]
    for r in rows:
        assert r["table_name"] == "sales.orders"
        assert int(r["txid"].__str__()) == txid
        assert r["db_user"] == "postgres" and r["role"] == "postgres"
        assert r["actor"] == "alice" and r["context"] == {"ticket": "T-1", "n": 2}
        assert str(r["client_addr"]) == addr == "127.0.0.1" and r["client_port"] == port
        assert r["backend_pid"] == pid and r["application_name"] == "billing-app"
        assert r["transaction_started_at"] == started
        assert before <= r["statement_at"] <= r["at"] <= after
    # Statements are distinguished by their statement timestamps, in order.
    stamps = [r["statement_at"] for r in rows]
    assert stamps[0] == stamps[1] < stamps[2] < stamps[3]
    assert count(orders.conn, "SELECT count(*) FROM audit.transaction") == 1


def test_numeric_scale_is_kept_in_images(orders: Audit) -> None:
    orders.conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 10.5, NULL)")
    (text,) = orders.conn.execute("SELECT new::text FROM audit.change").fetchone()  # type: ignore[misc]
    assert '"amount": 10.50' in text


def test_rolled_back_transaction_leaves_nothing(orders: Audit) -> None:
    conn = orders.conn
    with pytest.raises(ZeroDivisionError), conn.transaction():
        conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
        conn.execute("UPDATE sales.orders SET amount = 2")
        raise ZeroDivisionError
    assert count(conn, "SELECT count(*) FROM audit.change") == 0
    assert count(conn, "SELECT count(*) FROM audit.transaction") == 0


def test_rolled_back_savepoint_leaves_only_what_committed(orders: Audit) -> None:
    conn = orders.conn
    with conn.transaction():
        # The transaction record is first written inside the savepoint that is rolled back.
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
            raise ZeroDivisionError
        conn.execute("INSERT INTO sales.orders VALUES (2, 'bob', 2, NULL)")
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("DELETE FROM sales.orders")
            raise ZeroDivisionError
    assert brief(conn) == [
        ("INSERT", {"id": 2}, None, {"id": 2, "customer": "bob", "amount": 2.00})
    ]
    assert count(conn, "SELECT count(*) FROM audit.transaction") == 1
    assert (
        count(conn, "SELECT count(*) FROM audit.change c JOIN audit.transaction t USING (txid)")
        == 1
    )


def test_one_transaction_record_for_all_changes(orders: Audit) -> None:
    conn = orders.conn
    conn.execute("CREATE TABLE sales.notes (id int PRIMARY KEY, body text)")
    orders.enable("sales.notes")
    with conn.transaction():
        conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
        conn.execute("INSERT INTO sales.notes VALUES (1, 'n')")
        conn.execute("UPDATE sales.orders SET amount = 3")
        txid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    conn.execute("INSERT INTO sales.notes VALUES (2, 'other transaction')")
    assert count(conn, "SELECT count(*) FROM audit.transaction") == 2
    rows = conn.execute(
        "SELECT txid::text, count(*) FROM audit.change GROUP BY 1 ORDER BY 2"
    ).fetchall()
    assert [r[1] for r in rows] == [1, 3]
    assert rows[1][0] == txid[0]  # type: ignore[index]


def test_statement_touching_no_row_logs_nothing(orders: Audit) -> None:
    orders.conn.execute("UPDATE sales.orders SET amount = 1 WHERE id = 42")
    orders.conn.execute("DELETE FROM sales.orders")
    assert count(orders.conn, "SELECT count(*) FROM audit.change") == 0
    assert count(orders.conn, "SELECT count(*) FROM audit.transaction") == 0


@pytest.mark.parametrize("extra", ["none", "json", "type of a tenant"])
def test_key_updates_leave_exact_history_per_key(
    audit: Audit, extra: str, make_role: Callable[..., str]
) -> None:
    """Also for images built column by column (a json column; a type a tenant owns): the side
    of a key change that has no row is null, not an object of nulls."""
    conn = audit.conn
    column = {"none": "", "json": ", doc json", "type of a tenant": ", mood sales.mood"}[extra]
    conn.execute("CREATE SCHEMA sales")
    if extra == "type of a tenant":
        tenant = make_role("tenant")
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA sales TO {}").format(sql.Identifier(tenant)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(tenant)))
        conn.execute("CREATE TYPE sales.mood AS ENUM ('ok', 'sad')")
        conn.execute("RESET ROLE")
    # A deferrable key lets one UPDATE shift keys onto each other (id = id + 1).
    conn.execute(
        "CREATE TABLE sales.orders (id int PRIMARY KEY DEFERRABLE,"
        f" customer text, amount numeric(10,2), password_hash text{column})"
    )
    audit.enable("sales.orders")
    conn.execute(
        "INSERT INTO sales.orders SELECT g, 'c' || g, g, NULL FROM generate_series(1, 3) g"
    )
    conn.execute("UPDATE sales.orders SET id = id + 1")  # 1->2, 2->3, 3->4: keys 2 and 3 reused
    conn.execute(
        "UPDATE sales.orders SET id = CASE id WHEN 2 THEN 4 WHEN 4 THEN 2 END WHERE id IN (2, 4)"
    )
    upd = [r for r in changes(conn) if r["op"] == "UPDATE"]
    images = [r[side] for r in upd for side in ("old", "new") if r[side] is not None]
    assert all(image["id"] is not None for image in images), "an image of a missing row"
    by_key: dict[int, list[tuple[Any, Any]]] = {}
    for r in upd:
        by_key.setdefault(r["pk"]["id"], []).append(
            (r["old"] and r["old"]["customer"], r["new"] and r["new"]["customer"])
        )
    assert by_key == {
        1: [("c1", None)],  # key 1 left
        2: [("c2", "c1"), ("c1", "c3")],  # first update: holds c1; swap: holds c3
        3: [("c3", "c2")],
        4: [(None, "c3"), ("c3", "c1")],  # key 4 appeared, then swapped
    }
    # Replaying the per-key states gives the live table.
    replayed = {
        pk: new
        for pk, new in conn.execute(
            "SELECT DISTINCT ON (pk) pk->>'id', new->>'customer' FROM audit.change ORDER BY pk, id DESC"
        ).fetchall()
        if new is not None
    }
    live = dict(conn.execute("SELECT id::text, customer FROM sales.orders").fetchall())
    assert replayed == live


def test_composite_key(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        "CREATE TABLE lines (order_no int, line smallint, sku text, qty int, PRIMARY KEY (order_no, line))"
    )
    audit.enable("lines")
    conn.execute("INSERT INTO lines VALUES (1, 1, 'a', 1), (1, 2, 'b', 1), (2, 1, 'a', 5)")
    conn.execute("UPDATE lines SET qty = qty + 1 WHERE order_no = 1")
    conn.execute("UPDATE lines SET line = 3 WHERE order_no = 2")
    conn.execute("DELETE FROM lines WHERE order_no = 1 AND line = 1")
    assert [(op, pk) for op, pk, _, _ in brief(conn)] == [
        ("INSERT", {"order_no": 1, "line": 1}),
        ("INSERT", {"order_no": 1, "line": 2}),
        ("INSERT", {"order_no": 2, "line": 1}),
        ("UPDATE", {"order_no": 1, "line": 1}),
        ("UPDATE", {"order_no": 1, "line": 2}),
        ("UPDATE", {"order_no": 2, "line": 1}),
        ("UPDATE", {"order_no": 2, "line": 3}),
        ("DELETE", {"order_no": 1, "line": 1}),
    ]


def test_excluded_columns_are_never_stored(orders: Audit) -> None:
    conn = orders.conn
    orders.enable("sales.orders", capture_truncate=True)  # keeps the exclusion
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, 'SENTINEL-1')")
    conn.execute("UPDATE sales.orders SET password_hash = 'SENTINEL-2'")
    conn.execute("TRUNCATE sales.orders")
    assert count(conn, "SELECT count(*) FROM audit.change") == 3
    for table in ("audit.change", "audit.transaction", "audit.tracked_table"):
        assert count(conn, f"SELECT count(*) FROM {table} x WHERE x::text LIKE '%SENTINEL%'") == 0
    # The update of the excluded column alone is still recorded, without its value.
    upd = changes(conn, "op = 'UPDATE'")[0]
    assert upd["old"] == upd["new"] == {"id": 1, "customer": "ann", "amount": 1.00}


def test_excluding_unknown_or_key_column_is_refused(orders: Audit) -> None:
    with pytest.raises(InvalidInput, match=r"column nope of table sales\.orders does not exist"):
        orders.enable("sales.orders", exclude=["nope"])
    with pytest.raises(InvalidInput, match="cannot exclude key column"):
        orders.enable("sales.orders", exclude=["id"])
    # Nothing changed: the previous exclusion is still in force.
    assert orders.status()[0]["excluded_columns"] == ["password_hash"]


ODD_SCHEMA = 'Sales "Dept"'
ODD_TABLE = "Order Items ünï"
ODD_KEY = 'Line "No"'


def test_odd_identifiers(audit: Audit) -> None:
    conn = audit.conn
    schema, table = sql.Identifier(ODD_SCHEMA), sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    conn.execute(
        sql.SQL(
            'CREATE TABLE {} ({} int PRIMARY KEY, "MixedCase" text, "with space" text, "número" int,'
            ' "Secret Col" text)'
        ).format(table, sql.Identifier(ODD_KEY))
    )
    qualified = table.as_string(conn)
    audit.enable(qualified, exclude=["Secret Col"])
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'A', 'b c', 3, 'hidden')").format(table))
    conn.execute(
        sql.SQL('UPDATE {} SET "número" = 4, {} = 2').format(table, sql.Identifier(ODD_KEY))
    )
    rows = list(audit.history(qualified))
    assert {r["table"] for r in rows} == {qualified}
    assert [(r["op"], r["pk"]) for r in rows] == [
        ("INSERT", {ODD_KEY: 1}),
        ("UPDATE", {ODD_KEY: 1}),
        ("UPDATE", {ODD_KEY: 2}),
    ]
    assert rows[2]["new"] == {ODD_KEY: 2, "MixedCase": "A", "with space": "b c", "número": 4}
    assert audit.status()[0]["table"] == qualified
    assert audit.disable(qualified) == {qualified: True}


def without_guards(audit: Audit) -> None:
    """Drop the guard event triggers, as on a server where the installer is no superuser, and
    regenerate capture: the functions then check the column layout at every statement."""
    audit.conn.execute(
        "DROP EVENT TRIGGER pgaudit_guard_ddl; DROP EVENT TRIGGER pgaudit_guard_drop;"
        " DROP EVENT TRIGGER pgaudit_guard_rewrite"
    )
    for row in audit.status():
        audit.refresh(row["table"])


def layout_checks(conn: psycopg.Connection[Any]) -> list[bool]:
    return [
        r[0] for r in conn.execute("SELECT layout_check FROM audit.tracked_table ORDER BY relid")
    ]


@pytest.mark.parametrize("guards", [True, False], ids=["guard-rewrites", "layout-check"])
def test_alter_table_keeps_capture_correct(orders: Audit, guards: bool) -> None:
    conn = orders.conn
    if not guards:
        without_guards(orders)
    assert layout_checks(conn) == [not guards]
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, 'SENTINEL')")
    conn.execute("ALTER TABLE sales.orders ADD COLUMN note text DEFAULT 'n'")
    # On a table with excluded columns a new column is held back until the exclusions are set
    # again (it could receive a copy of a secret): note is captured from then on.
    if guards:
        assert orders.status()[0]["excluded_columns"] == ["password_hash", "note"]
    orders.enable("sales.orders", exclude=["password_hash"])
    conn.execute("UPDATE sales.orders SET amount = 2")
    conn.execute("ALTER TABLE sales.orders DROP COLUMN customer")
    conn.execute("UPDATE sales.orders SET amount = 3")
    conn.execute("ALTER TABLE sales.orders RENAME COLUMN password_hash TO pw")
    conn.execute("ALTER TABLE sales.orders RENAME COLUMN note TO remark")
    conn.execute("UPDATE sales.orders SET amount = 4, pw = 'SENTINEL'")
    conn.execute("ALTER TABLE sales.orders RENAME COLUMN id TO order_id")
    conn.execute("INSERT INTO sales.orders (order_id, amount, pw) VALUES (2, 5, 'SENTINEL')")
    conn.execute("ALTER TABLE sales.orders RENAME TO purchases")
    conn.execute("DELETE FROM sales.purchases WHERE order_id = 2")
    news = [(c["table_name"], c["op"], c["pk"], c["new"]) for c in changes(conn)]
    assert news == [
        ("sales.orders", "INSERT", {"id": 1}, {"id": 1, "customer": "ann", "amount": 1.00}),
        (
            "sales.orders",
            "UPDATE",
            {"id": 1},
            {"id": 1, "customer": "ann", "amount": 2.00, "note": "n"},
        ),
        ("sales.orders", "UPDATE", {"id": 1}, {"id": 1, "amount": 3.00, "note": "n"}),
        ("sales.orders", "UPDATE", {"id": 1}, {"id": 1, "amount": 4.00, "remark": "n"}),
        ("sales.orders", "INSERT", {"order_id": 2}, {"order_id": 2, "amount": 5.00, "remark": "n"}),
        ("sales.purchases", "DELETE", {"order_id": 2}, None),
    ]
    assert count(conn, "SELECT count(*) FROM audit.change x WHERE x::text LIKE '%SENTINEL%'") == 0
    status = orders.status()[0]
    assert (status["key_columns"], status["excluded_columns"]) == (["order_id"], ["pw"])
    # refresh regenerates the function with the new names; capture stays the same.
    orders.refresh("sales.purchases")
    conn.execute("UPDATE sales.purchases SET pw = 'SENTINEL', amount = 6")
    assert changes(conn)[-1]["new"] == {"order_id": 1, "amount": 6.00, "remark": "n"}
    assert count(conn, "SELECT count(*) FROM audit.change x WHERE x::text LIKE '%SENTINEL%'") == 0
    row = conn.execute(
        "SELECT table_name, key_columns, excluded_columns FROM audit.tracked_table"
    ).fetchone()
    assert row == ("purchases", ["order_id"], ["pw"])
    assert layout_checks(conn) == [not guards]
    assert not [p for p in orders.doctor() if p["severity"] != "info"]


@pytest.mark.parametrize("guards", [True, False], ids=["guard-rewrites", "layout-check"])
def test_dropping_the_key_column_blocks_writes_with_a_clear_error(
    orders: Audit, guards: bool
) -> None:
    conn = orders.conn
    if not guards:
        without_guards(orders)
    if guards:
        # The guard refuses to leave an audited table without a key.
        with pytest.raises(
            psycopg.errors.ObjectNotInPrerequisiteState, match="must keep a primary key"
        ):
            conn.execute("ALTER TABLE sales.orders DROP COLUMN id")
        return
    conn.execute("ALTER TABLE sales.orders DROP COLUMN id")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="lost a key column"):
        conn.execute("INSERT INTO sales.orders VALUES ('ann', 1, NULL)")
    assert count(conn, "SELECT count(*) FROM sales.orders") == 0


def test_replica_mode_cannot_skip_capture(orders: Audit) -> None:
    conn = orders.conn
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
        conn.execute("TRUNCATE sales.orders")
    assert [op for op, *_ in brief(conn)] == ["INSERT", "TRUNCATE"]


def test_truncate_records_content(orders: Audit) -> None:
    conn = orders.conn
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, 'x'), (2, 'bob', 2, 'y')")
    conn.execute("TRUNCATE sales.orders")
    assert brief(conn, "op = 'TRUNCATE'") == [
        ("TRUNCATE", {"id": 1}, {"id": 1, "customer": "ann", "amount": 1.00}, None),
        ("TRUNCATE", {"id": 2}, {"id": 2, "customer": "bob", "amount": 2.00}, None),
    ]


def test_truncate_without_content_records_a_marker(orders: Audit) -> None:
    conn = orders.conn
    orders.enable("sales.orders", capture_truncate=False)
    conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, 'x'), (2, 'bob', 2, 'y')")
    conn.execute("TRUNCATE sales.orders")
    assert brief(conn, "op = 'TRUNCATE'") == [("TRUNCATE", None, None, None)]
    assert orders.status()[0]["capture_truncate"] is False
    orders.enable("sales.orders")  # settings are kept when not given
    assert orders.status()[0]["capture_truncate"] is False


def test_partitioned_table_captures_every_partition(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        "CREATE TABLE m (region text, id int, v int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);"
        "CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');"
        "CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);"
        "CREATE TABLE m_us_low PARTITION OF m_us FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE m_us_high PARTITION OF m_us FOR VALUES FROM (100) TO (1000);"
    )
    with pytest.raises(TableNotSuitable, match="public.m_eu is a partition of public.m;"):
        audit.enable("m_eu")
    status = audit.enable("m")[0]
    assert (status["partitions"], status["triggers_present"], status["state"]) == (4, 20, "ok")
    conn.execute("INSERT INTO m VALUES ('eu', 1, 1), ('us', 5, 1)")  # through the parent
    conn.execute("INSERT INTO m_us_high VALUES ('us', 500, 1)")  # directly into a partition
    conn.execute("UPDATE m SET id = 150 WHERE id = 5")  # moves between partitions
    conn.execute("UPDATE m_eu SET v = 2")
    conn.execute("TRUNCATE m_us")
    got = [(c["table_name"], c["op"], c["pk"]) for c in changes(conn)]
    assert got == [
        ("public.m", "INSERT", {"region": "eu", "id": 1}),
        ("public.m", "INSERT", {"region": "us", "id": 5}),
        ("public.m", "INSERT", {"region": "us", "id": 500}),
        ("public.m", "UPDATE", {"region": "us", "id": 5}),
        ("public.m", "UPDATE", {"region": "us", "id": 150}),
        ("public.m", "UPDATE", {"region": "eu", "id": 1}),
        ("public.m", "TRUNCATE", {"region": "us", "id": 500}),  # physical order of m_us_high
        ("public.m", "TRUNCATE", {"region": "us", "id": 150}),
    ]
    assert count(conn, "SELECT count(DISTINCT relid) FROM audit.change") == 1


@pytest.mark.parametrize("guards", [True, False], ids=["guard-rewrites", "layout-check"])
def test_partitions_added_after_enable(audit: Audit, guards: bool) -> None:
    """With the guard, partitions created or attached later get their capture triggers at once:
    writes made directly to them are captured. Without it, status and doctor say they are
    missing until refresh."""
    conn = audit.conn
    conn.execute(
        "CREATE TABLE m (region text, id int, v int, PRIMARY KEY (region, id)) PARTITION BY LIST (region);"
        "CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')"
    )
    audit.enable("m")
    if not guards:
        without_guards(audit)
    conn.execute(
        "CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);"
        "CREATE TABLE m_us_low PARTITION OF m_us FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE m_as (region text, id int, v int, PRIMARY KEY (region, id));"
        "ALTER TABLE m ATTACH PARTITION m_as FOR VALUES IN ('as')"
    )
    status = audit.status()[0]
    assert status["partitions"] == 4
    if not guards:
        assert status["state"] == "triggers missing"
        assert any(p["object"] == "public.m" and p["severity"] == "error" for p in audit.doctor())
        audit.refresh("public.m")
    assert (audit.status()[0]["state"], audit.status()[0]["triggers_always"]) == ("ok", 20)
    conn.execute("INSERT INTO m_us_low VALUES ('us', 1, 1)")
    conn.execute("INSERT INTO m_as VALUES ('as', 2, 2)")
    assert [(c["table_name"], c["op"], c["pk"]) for c in changes(conn)] == [
        ("public.m", "INSERT", {"region": "us", "id": 1}),
        ("public.m", "INSERT", {"region": "as", "id": 2}),
    ]
    assert not [p for p in audit.doctor() if p["severity"] != "info"]
    # Detached, a partition is no longer part of the audited table: nothing is logged under m,
    # and doctor offers to drop the triggers left on it.
    conn.execute("ALTER TABLE m DETACH PARTITION m_as")
    conn.execute("INSERT INTO m_as VALUES ('as', 3, 3)")
    assert len(changes(conn)) == 2
    left = [p for p in audit.doctor() if p["object"] == "public.m_as"]
    if guards:
        # The guard dropped its triggers, and recorded the rows that left m as a break in history.
        assert left == []
        breaks = [p for p in audit.doctor() if "history broken" in p["problem"]]
        assert [(p["object"], p["severity"]) for p in breaks] == [("public.m", "info")]
        assert "m_as was detached with rows" in breaks[0]["problem"]
    else:
        assert [p["severity"] for p in left] == ["warning"] and "detached" in left[0]["problem"]
        audit.apply_fixes([left[0]["fix"]])
    assert count(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'm_as'::regclass") == 0
    assert not [p for p in audit.doctor() if p["severity"] != "info"]


def test_many_partitions(audit: Audit) -> None:
    """Enabling a table of hundreds of partitions, each given its triggers by enable and the
    guard, neither recurses from partition to partition nor misses one."""
    conn = audit.conn
    conn.execute("CREATE TABLE big (k int, id int, PRIMARY KEY (k, id)) PARTITION BY LIST (k)")
    conn.execute(
        "DO $$ BEGIN FOR i IN 1..300 LOOP EXECUTE format("
        "'CREATE TABLE big_%s PARTITION OF big FOR VALUES IN (%s)', i, i); END LOOP; END $$"
    )
    audit.enable("big")
    conn.execute("CREATE TABLE big_301 PARTITION OF big FOR VALUES IN (301)")
    status = audit.status()[0]
    assert (status["state"], status["partitions"], status["triggers_always"]) == (
        "ok",
        301,
        4 * 302,
    )
    conn.execute("INSERT INTO big_301 VALUES (301, 1)")
    assert [(c["table_name"], c["pk"]) for c in changes(conn)] == [
        ("public.big", {"k": 301, "id": 1})
    ]


def test_no_query_of_ours_is_compiled(audit: Audit) -> None:
    """Functions of the schema run with jit off (but for the per-row ones, whose queries are
    never costly): JIT compiling a query takes 20 ms where running it takes less than one, and
    set-returning functions' estimates (1000 rows each) make the DDL guard's queries look
    costly: enable of a table of 300 partitions took 45 s on PostgreSQL 15 built with LLVM, 38
    of them compiling. Where the server can compile, at its default settings, no statement
    run inside our functions is compiled through enable, DDL, writes and reading."""
    conn = audit.conn
    unpinned = conn.execute(
        "SELECT p.proname FROM pg_proc AS p WHERE p.pronamespace = 'audit'::regnamespace"
        " AND NOT 'jit=off' = ANY (coalesce(p.proconfig, '{}'))"
        " AND p.proname NOT IN (SELECT x.capture_function FROM audit.tracked_table AS x)"
        " AND p.proname NOT LIKE '\\_mark\\_commit\\_%' ORDER BY 1"
    ).fetchall()
    assert [n for (n,) in unpinned] == ["_context", "_rename_keys", "changed_columns"]
    if not conn.execute("SELECT pg_jit_available()").fetchone()[0]:  # type: ignore[index]
        pytest.skip("this server cannot compile queries (built without LLVM)")
    conn.execute("RESET jit; RESET jit_above_cost; LOAD 'auto_explain'")
    conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = notice; SET client_min_messages = notice"
    )
    compiled: list[str] = []
    conn.add_notice_handler(
        lambda d: (
            compiled.append(d.message_primary or "")
            if "JIT:" in (d.message_primary or "")
            else None
        )
    )
    conn.execute(
        "CREATE TABLE big (k int, id int, v text, PRIMARY KEY (k, id)) PARTITION BY LIST (k)"
    )
    conn.execute("CREATE TABLE big_1 PARTITION OF big FOR VALUES IN (1)")
    audit.enable("big")
    conn.execute("CREATE TABLE big_2 PARTITION OF big FOR VALUES IN (2)")
    conn.execute("CREATE TABLE big_3 (LIKE big)")
    conn.execute("ALTER TABLE big ATTACH PARTITION big_3 FOR VALUES IN (3)")
    conn.execute("ALTER TABLE big ADD COLUMN w int")
    conn.execute(
        "INSERT INTO big SELECT k, g, 'x' FROM generate_series(1, 3) k, generate_series(1, 50) g"
    )
    conn.execute("UPDATE big SET w = id WHERE id < 10")
    conn.execute("DELETE FROM big WHERE id > 40")
    conn.commit()
    assert len(list(audit.history("big"))) == 150 + 27 + 30
    audit.row_at("big", {"k": 1, "id": 1}, datetime.now().astimezone())
    audit.verify()
    audit.doctor()
    audit.maintain()
    audit.disable("big")
    conn.commit()
    assert compiled == []


def test_replica_identity_index_is_used_without_primary_key(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        "CREATE TABLE r (code text NOT NULL, v int); CREATE UNIQUE INDEX r_code ON r (code);"
        "ALTER TABLE r REPLICA IDENTITY USING INDEX r_code"
    )
    assert audit.enable("r")[0]["key_source"] == "replica identity"
    conn.execute("INSERT INTO r VALUES ('a', 1)")
    assert brief(conn) == [("INSERT", {"code": "a"}, None, {"code": "a", "v": 1})]


def test_table_without_key_is_refused_and_nothing_changes(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        "CREATE TABLE k (v int); CREATE TABLE ok (id int PRIMARY KEY); CREATE VIEW vw AS SELECT 1 AS x"
    )
    with pytest.raises(
        TableNotSuitable, match="k has no primary key and no replica identity index"
    ) as exc:
        audit.enable("ok", "k")
    assert exc.value.hint is not None and "--skip-unsuitable" in exc.value.hint
    with pytest.raises(TableNotSuitable, match="vw is not a table"):
        audit.enable("vw")
    assert count(conn, "SELECT count(*) FROM audit.tracked_table") == 0
    assert (
        count(
            conn,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgaudit%'"
            " AND tgrelid::regclass::text NOT LIKE 'audit.%'",
        )
        == 0
    )
    assert [s["table"] for s in audit.enable("ok", "k", skip_unsuitable=True)] == ["public.ok"]


def test_unknown_table_and_missing_schema(audit: Audit, dsn: str) -> None:
    with pytest.raises(InvalidInput, match=r"table public\.nope does not exist"):
        audit.enable("public.nope")
    with pytest.raises(InvalidInput, match="schema 'nope' does not exist"):
        audit.enable(schemas=["nope"])
    audit.conn.execute("DROP SCHEMA audit CASCADE")
    with Audit.connect(dsn) as fresh, pytest.raises(NotInstalled, match="not installed"):
        fresh.status()


def test_enable_schema_and_idempotence(audit: Audit) -> None:
    conn = audit.conn
    conn.execute(
        "CREATE SCHEMA s; CREATE TABLE s.a (id int PRIMARY KEY); CREATE TABLE s.b (id int PRIMARY KEY)"
    )
    first = audit.enable(schemas=["s"])
    again = audit.enable(schemas=["s"])
    assert [r["table"] for r in first] == [r["table"] for r in again] == ["s.a", "s.b"]
    assert (
        count(
            conn,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgaudit%'"
            " AND tgrelid::regclass::text NOT LIKE 'audit.%'",
        )
        == 8
    )
    conn.execute("INSERT INTO s.a VALUES (1)")
    assert count(conn, "SELECT count(*) FROM audit.change") == 1  # not twice
    assert audit.disable("s.a") == {"s.a": True}
    assert audit.disable("s.a") == {"s.a": False}
    conn.execute("INSERT INTO s.a VALUES (2)")
    assert count(conn, "SELECT count(*) FROM audit.change") == 1  # history stays, capture off
    states = {r["table"]: r["state"] for r in audit.status()}
    assert states == {"s.a": "disabled", "s.b": "ok"}
    audit.enable("s.a")
    conn.execute("INSERT INTO s.a VALUES (3)")
    assert count(conn, "SELECT count(*) FROM audit.change") == 2


def test_status_notices_missing_and_weakened_triggers(orders: Audit) -> None:
    conn = orders.conn
    conn.execute(
        "ALTER TABLE sales.orders ENABLE TRIGGER pgaudit_update"
    )  # origin only, not ALWAYS
    assert orders.status()[0]["state"] == "triggers not ENABLE ALWAYS"
    conn.execute("DROP TRIGGER pgaudit_delete ON sales.orders")
    assert orders.status()[0]["state"] == "triggers missing"
    orders.enable("sales.orders")  # repairs
    assert orders.status()[0]["state"] == "ok"
    conn.execute("DROP TABLE sales.orders")
    assert orders.status()[0]["state"] == "table dropped"


def test_acting_role_under_set_role_and_security_definer(
    orders: Audit, pg_server: PgServer, make_role: Callable[..., str], dsn: str
) -> None:
    conn = orders.conn
    clerk, owner = make_role("clerk"), make_role("owner")
    dbname = conn.info.dbname
    conn.execute(
        sql.SQL(
            "GRANT USAGE ON SCHEMA sales TO {clerk}, {owner};"
            "GRANT SELECT, INSERT, UPDATE ON sales.orders TO {owner};"
            "GRANT INSERT ON sales.orders TO {clerk};"
            "GRANT {owner} TO {clerk};"
            "CREATE FUNCTION sales.bump() RETURNS void LANGUAGE sql SECURITY DEFINER"
            " SET search_path = pg_catalog AS 'UPDATE sales.orders SET amount = amount + 1';"
            "ALTER FUNCTION sales.bump() OWNER TO {owner};"
        ).format(clerk=sql.Identifier(clerk), owner=sql.Identifier(owner))
    )
    with psycopg.connect(pg_server.dsn_for(dbname, user=clerk), autocommit=True) as c:
        c.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
        c.execute("SELECT sales.bump()")
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        c.execute("INSERT INTO sales.orders VALUES (2, 'bob', 1, NULL)")
    # The acting role is the session's: SET ROLE's, else the login role. A SECURITY DEFINER
    # function runs its statements as its owner, but it was the clerk who called it.
    got = [(c["op"], c["db_user"], c["role"]) for c in changes(conn)]
    assert got == [("INSERT", clerk, clerk), ("UPDATE", clerk, clerk), ("INSERT", clerk, owner)]


def test_invalid_context_fails_the_write_clearly(orders: Audit) -> None:
    conn = orders.conn
    for bad, message in (
        ("not json", "pgaudit.context is not valid JSON"),
        ("[1]", "must be a JSON object"),
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message), conn.transaction():
            conn.execute("SELECT set_config('pgaudit.context', %s, true)", (bad,))
            conn.execute("INSERT INTO sales.orders VALUES (1, 'ann', 1, NULL)")
    assert count(conn, "SELECT count(*) FROM sales.orders") == 0
    assert count(conn, "SELECT count(*) FROM audit.change") == 0


def test_a_context_jsonb_cannot_hold_is_kept_as_text(orders: Audit) -> None:
    """Valid JSON that jsonb cannot hold (a NUL escape, perhaps from a request header, a huge
    number) does not fail the write: the context is kept as the text that was set."""
    conn = orders.conn
    key_row = conn.execute("SELECT audit._kept_as_text_key()").fetchone()
    assert key_row is not None
    for n, raw in enumerate(('{"agent": "x\\u0000y"}', '{"n": 1e999999}'), start=1):
        with conn.transaction():
            conn.execute("SELECT set_config('pgaudit.context', %s, true)", (raw,))
            conn.execute("INSERT INTO sales.orders VALUES (%s, 'ann', 1, NULL)", (n,))
    contexts = [r[0] for r in conn.execute("SELECT context FROM audit.transaction ORDER BY txid")]
    assert contexts == [
        {key_row[0]: '{"agent": "x\\u0000y"}'},
        {key_row[0]: '{"n": 1e999999}'},
    ]


@pytest.mark.parametrize(
    ("columns", "pinned"),
    [
        ("a int, b text, c numeric, d date, e timestamp, f jsonb, g uuid", []),
        ("a timestamptz, b int[]", ["TimeZone=UTC"]),
        (
            "a interval[], b float4, c bytea",
            ["IntervalStyle=postgres", "extra_float_digits=1", "bytea_output=hex"],
        ),
        ("a tstzrange", ALL_OUTPUT_SETTINGS),  # a range is written by its output function
        ("a money", ALL_OUTPUT_SETTINGS),
        ("a sales.kind", ALL_OUTPUT_SETTINGS),  # a type of the table owner's
    ],
)
def test_capture_function_pins_the_output_settings_its_types_depend_on(
    audit: Audit, columns: str, pinned: list[str]
) -> None:
    """Each pinned setting costs every call (issue 13): only those the table's images depend
    on are pinned; anything but a known built-in type pins them all."""
    conn = audit.conn
    conn.execute("CREATE SCHEMA sales; CREATE TYPE sales.kind AS ENUM ('a', 'b')")
    conn.execute(f"CREATE TABLE sales.p (id int PRIMARY KEY, {columns})")
    audit.enable("sales.p")
    config = conn.execute(
        "SELECT p.proconfig FROM pg_proc AS p JOIN audit.tracked_table AS t"
        " ON p.proname = t.capture_function AND p.pronamespace = 'audit'::regnamespace"
    ).fetchone()[0]  # type: ignore[index]
    assert config == ["search_path=pg_catalog, pg_temp", *pinned]
    assert [p for p in audit.doctor() if p["severity"] == "error"] == []


def test_generated_capture_function_is_private(
    orders: Audit, pg_server: PgServer, make_role: Callable[..., str]
) -> None:
    conn = orders.conn
    fn = conn.execute("SELECT capture_function FROM audit.tracked_table").fetchone()[0]  # type: ignore[index]
    config, secdef, public_exec = conn.execute(
        "SELECT proconfig, prosecdef, has_function_privilege('public', oid, 'EXECUTE')"
        " FROM pg_proc WHERE proname = %s AND pronamespace = 'audit'::regnamespace",
        (fn,),
    ).fetchone()  # type: ignore[misc]
    assert secdef and config[0] == "search_path=pg_catalog, pg_temp" and not public_exec
    user = make_role("app")
    with psycopg.connect(pg_server.dsn_for(conn.info.dbname, user=user), autocommit=True) as c:
        for stmt in (
            "INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role,"
            " statement_at, clock_at) VALUES ('1', 1, 's', 't', 'I', 'r', now(), now())",
            "SELECT audit._rewrite_after_ddl('sales.orders')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(stmt)


@pytest.mark.parametrize("partitioned", [False, True], ids=["table", "partitioned"])
def test_writable_ctes_log_each_key_in_order(audit: Audit, partitioned: bool) -> None:
    """Issue 11, item 8: a key deleted (or re-keyed) in a data-modifying CTE and inserted again
    by the main statement must be logged removal first, or every earlier table-at is wrong."""
    conn = audit.conn
    if partitioned:
        conn.execute(
            "CREATE TABLE s (id int, k int DEFAULT 1, v text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);"
            "CREATE TABLE s1 PARTITION OF s FOR VALUES IN (1)"
        )
    else:
        conn.execute("CREATE TABLE s (id int, k int DEFAULT 1, v text, PRIMARY KEY (id, k))")
    audit.enable("s")
    conn.execute("INSERT INTO s (id, v) VALUES (12, 'a'), (13, 'b')")
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    t0 = row[0]
    statements = [
        "WITH d AS (DELETE FROM s WHERE id = 12 RETURNING id) INSERT INTO s (id, v) SELECT id, 'reborn' FROM d",
        "WITH d AS (DELETE FROM s WHERE id = 13 RETURNING id),"
        " i AS (INSERT INTO s (id, v) SELECT id, 'x' FROM d RETURNING id) SELECT count(*) FROM i",
        "WITH u AS (UPDATE s SET id = 20 WHERE id = 12 RETURNING id) INSERT INTO s (id, v) SELECT 12, 'again' FROM u",
    ]
    for statement in statements:
        conn.execute(statement)
    ops = [(op, pk["id"]) for op, pk, *_ in brief(conn)][2:]
    assert ops == [
        ("DELETE", 12),
        ("INSERT", 12),
        ("DELETE", 13),
        ("INSERT", 13),
        ("UPDATE", 12),
        ("UPDATE", 20),
        ("INSERT", 12),
    ]
    assert sorted((r["id"], r["v"]) for r in audit.table_at("s", t0)) == [(12, "a"), (13, "b")]


def test_capture_never_scans_the_log_sequentially_on_stale_statistics(orders: Audit) -> None:
    """Plans on the write path must not depend on statistics (issue 13): after ANALYZE of an
    almost empty log, a session that planned capture's statements then (plpgsql keeps generic
    plans after five executions) and keeps writing while the log grows must not look up its
    transaction record, nor the commit marker its row, by a sequential scan."""
    conn = orders.conn
    for (partition,) in conn.execute("SELECT partition::text FROM audit.partitions()").fetchall():
        conn.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = off)")
    conn.execute("INSERT INTO sales.orders VALUES (0, 'ann', 1, NULL)")
    conn.execute("ANALYZE audit.transaction, audit.change")
    for _ in range(8):
        conn.execute("UPDATE sales.orders SET amount = amount + 1 WHERE id = 0")
    conn.execute(
        "DO $$ BEGIN FOR i IN 1..5000 LOOP"
        " INSERT INTO sales.orders VALUES (i, 'bob', i, NULL); COMMIT; END LOOP; END $$"
    )
    with conn.transaction():
        conn.execute("UPDATE sales.orders SET amount = amount + 1 WHERE id = 1")
        conn.execute("UPDATE sales.orders SET amount = amount + 1 WHERE id = 2")
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the commit marker runs now
        scans = conn.execute(
            "SELECT p.log, sum(s.seq_scan)::int FROM audit.partitions() AS p"
            " JOIN pg_stat_xact_all_tables AS s ON s.relid = p.partition GROUP BY 1 ORDER BY 1"
        ).fetchall()
        stamped = count(
            conn,
            "SELECT count(*) FROM audit.transaction"
            " WHERE txid = pg_current_xact_id() AND committed_at IS NOT NULL",
        )
    assert scans == [("change", 0), ("transaction", 0)]
    assert stamped == 1
    assert count(conn, "SELECT count(*) FROM audit.transaction WHERE committed_at IS NULL") == 0
