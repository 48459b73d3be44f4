"""Point-in-time reconstruction, diff, blame and history filters, against snapshots of the truth."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pgaudit_tool import Audit
from pgaudit_tool.errors import InvalidInput, TableNotSuitable


def now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def assert_same_rows(
    conn: psycopg.Connection[Any], left: sql.Composable, right: sql.Composable
) -> None:
    """Both queries return the same multiset of rows (EXCEPT ALL both ways)."""
    for a, b in ((left, right), (right, left)):
        extra = conn.execute(sql.SQL("({}) EXCEPT ALL ({})").format(a, b)).fetchall()
        assert extra == [], f"rows only on one side: {extra[:5]}"


def table_at_sql(table: str, at: datetime) -> sql.Composable:
    return sql.SQL("SELECT * FROM audit.table_at(NULL::{}, {})").format(
        sql.Identifier(table), sql.Literal(at)
    )


@pytest.fixture
def shop(audit: Audit) -> Audit:
    audit.conn.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), secret text)"
    )
    audit.conn.execute("INSERT INTO orders VALUES (1, 'before auditing', 1, 's')")
    audit.enable("orders", exclude=["secret"])
    return audit


def test_row_and_table_at_every_instant(shop: Audit) -> None:
    conn = shop.conn
    instants = [now(conn)]
    for stmt in (
        "INSERT INTO orders VALUES (2, 'b', 2, 's'), (3, 'c', 3, 's')",
        "UPDATE orders SET amount = amount * 10",
        "UPDATE orders SET id = 30 WHERE id = 3",
        "DELETE FROM orders WHERE id = 2",
        "INSERT INTO orders VALUES (2, 'b again', 22, 's')",
        "TRUNCATE orders",
        "INSERT INTO orders VALUES (1, 'new one', 100, 's')",
    ):
        conn.execute(stmt)
        instants.append(now(conn))
    expected = [
        {1: ("before auditing", "1.00")},
        {1: ("before auditing", "1.00"), 2: ("b", "2.00"), 3: ("c", "3.00")},
        {1: ("before auditing", "10.00"), 2: ("b", "20.00"), 3: ("c", "30.00")},
        {1: ("before auditing", "10.00"), 2: ("b", "20.00"), 30: ("c", "30.00")},
        {1: ("before auditing", "10.00"), 30: ("c", "30.00")},
        {1: ("before auditing", "10.00"), 2: ("b again", "22.00"), 30: ("c", "30.00")},
        {},
        {1: ("new one", "100.00")},
    ]
    for at, want in zip(instants, expected, strict=True):
        rows = conn.execute(
            sql.SQL("SELECT id, customer, amount::text, secret FROM ({}) t").format(
                table_at_sql("orders", at)
            )
        ).fetchall()
        assert {r[0]: (r[1], r[2]) for r in rows} == want
        assert all(r[3] is None for r in rows)  # excluded column: not recorded, so NULL
        for key in (1, 2, 3, 30):
            row = shop.row_at("orders", key, at)
            if key not in want:
                assert row is None
            else:
                assert row == {"id": key, "customer": want[key][0], "amount": Decimal(want[key][1])}


def test_state_at_t_is_by_commit_time(shop: Audit, dsn: str) -> None:
    """A transaction that changed a row before T but committed after T is not part of T."""
    conn = shop.conn
    with psycopg.connect(dsn) as slow:
        slow.execute("UPDATE orders SET customer = 'slow' WHERE id = 1")
        t = now(conn)  # the update is made, not committed
        slow.commit()
    after = now(conn)
    assert shop.row_at("orders", 1, t)["customer"] == "before auditing"  # type: ignore[index]
    assert shop.row_at("orders", 1, after)["customer"] == "slow"  # type: ignore[index]
    committed, clock = conn.execute(
        "SELECT x.committed_at, c.clock_at FROM audit.change c JOIN audit.transaction x USING (txid)"
    ).fetchone()  # type: ignore[misc]
    assert clock < t < committed < after


def test_concurrent_writers_and_snapshots(shop: Audit, dsn: str) -> None:
    """Snapshots taken between the commits of concurrent sessions are rebuilt exactly.

    The writers pause (each holds its own lock around a transaction) only while a snapshot and
    its instant are taken: "committed at or before T" and "visible at T" differ only for a
    transaction caught between its commit marker and its commit record, which this avoids.
    """
    conn = shop.conn
    conn.execute("INSERT INTO orders SELECT g, 'c' || g, g, 's' FROM generate_series(2, 50) g")
    stop = threading.Event()
    locks = [threading.Lock() for _ in range(3)]

    def writer(seed: int) -> None:
        with psycopg.connect(dsn) as w:
            i = 0
            while not stop.is_set():
                i += 1
                with locks[seed], w.transaction():
                    for k in range(3):
                        key = (seed * 7 + i * 3 + k) % 50 + 1
                        w.execute(
                            "UPDATE orders SET amount = amount + 1, customer = %s WHERE id = %s",
                            (f"w{seed}-{i}", key),
                        )

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    snapshots = []
    try:
        for n in range(5):
            threading.Event().wait(0.2)  # let the writers interleave their commits
            for lock in locks:
                lock.acquire()
            try:
                name = sql.Identifier(f"snap{n}")
                conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM orders").format(name))
                snapshots.append((f"snap{n}", now(conn)))
            finally:
                for lock in locks:
                    lock.release()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for name, t in snapshots:
        conn.execute(sql.SQL("UPDATE {} SET secret = NULL").format(sql.Identifier(name)))
        assert_same_rows(
            conn,
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)),
            table_at_sql("orders", t),
        )


def test_renamed_added_and_dropped_columns(shop: Audit) -> None:
    conn = shop.conn
    conn.execute("INSERT INTO orders VALUES (2, 'b', 2, 's')")
    t0 = now(conn)
    conn.execute("UPDATE orders SET amount = 5")
    conn.execute("ALTER TABLE orders RENAME COLUMN customer TO client")
    conn.execute("ALTER TABLE orders ADD COLUMN note text DEFAULT 'new'")
    shop.enable("orders", exclude=["secret"])  # note, added after secret was excluded, captured
    conn.execute("UPDATE orders SET client = upper(client), note = 'x' WHERE id = 2")
    conn.execute("ALTER TABLE orders DROP COLUMN amount")
    rows = conn.execute(
        sql.SQL("SELECT * FROM ({}) t ORDER BY id").format(table_at_sql("orders", t0))
    ).fetchall()
    # Today's columns (id, client, secret, note): renamed columns read under their new name,
    # columns added since T are NULL, dropped ones are gone (the log's JSONB still has them).
    assert rows == [(1, "before auditing", None, None), (2, "b", None, None)]
    # In JSON, a column dropped since keeps its last name.
    assert shop.row_at("orders", 2, t0) == {"id": 2, "client": "b", "amount": Decimal("2.00")}
    diff = list(shop.diff("orders", t0, "now"))
    # The diff compares recorded images: row 1's last image predates ADD COLUMN note.
    assert [(d["pk"], d["change"], d["changed"]) for d in diff] == [
        ({"id": 1}, "UPDATE", ["amount"]),
        ({"id": 2}, "UPDATE", ["amount", "client", "note"]),
    ]
    assert diff[1]["before"] == {"id": 2, "client": "b", "amount": Decimal("2.00")}


def test_key_column_renamed(shop: Audit) -> None:
    conn = shop.conn
    t0 = now(conn)
    conn.execute("UPDATE orders SET customer = 'x'")
    conn.execute("ALTER TABLE orders RENAME COLUMN id TO order_id")
    conn.execute("UPDATE orders SET customer = 'y'")
    assert shop.row_at("orders", 1, t0) == {
        "order_id": 1,
        "customer": "before auditing",
        "amount": Decimal("1.00"),
    }
    assert [c["new"]["customer"] for c in shop.history("orders", pk=1)] == ["x", "y"]
    blame = {b["column_name"]: b for b in shop.blame("orders", '{"order_id": 1}')}
    assert blame["customer"]["value"] == "y" and blame["amount"]["change_id"] is None


def test_diff_consolidates_and_blame_names_the_last_writer(shop: Audit) -> None:
    conn = shop.conn
    t0 = now(conn)
    with shop.actor("alice"):
        conn.execute("INSERT INTO orders VALUES (2, 'b', 2, 's'), (3, 'temp', 3, 's')")
    with shop.actor("bob"):
        conn.execute("UPDATE orders SET amount = 9 WHERE id = 1")
        conn.execute("DELETE FROM orders WHERE id = 3")  # created and removed inside the window
    with shop.actor("carol"):
        conn.execute("UPDATE orders SET customer = 'B' WHERE id = 2")
        conn.execute("UPDATE orders SET amount = 1 WHERE id = 1")  # back to where it began
    diff = list(shop.diff("orders", t0, now(conn)))
    assert [(d["pk"], d["change"], d["before"], d["after"]) for d in diff] == [
        ({"id": 2}, "INSERT", None, {"id": 2, "customer": "B", "amount": Decimal("2.00")}),
    ]
    blame = {b["column_name"]: (b["value"], b["actor"], b["op"]) for b in shop.blame("orders", 2)}
    assert blame == {
        "id": (2, "alice", "INSERT"),
        "customer": ("B", "carol", "UPDATE"),
        "amount": (Decimal("2.00"), "alice", "INSERT"),
    }
    blame1 = {b["column_name"]: (b["value"], b["actor"]) for b in shop.blame("orders", 1)}
    assert blame1 == {
        "id": (1, None),
        "customer": ("before auditing", None),
        "amount": (Decimal("1.00"), "carol"),
    }
    with pytest.raises(InvalidInput, match="no row with key"):
        shop.blame("orders", 3)


@pytest.mark.parametrize("renamed", [False, True])
def test_table_at_and_diff_list_rows_in_key_order(audit: Audit, renamed: bool) -> None:
    """Rows come in the order of the key's columns and their types (2 before 10, the first
    column first), whatever the physical order after updates: two listings compare line by
    line. The current names of the key columns count (after a rename too)."""
    conn = audit.conn
    conn.execute(
        'CREATE TABLE "Odd ks" (region text, "n o" int, v text, PRIMARY KEY (region, "n o"))'
    )
    rows = [(r, n) for r in ("west", "east", "Ä") for n in (10, 2, 33, 1)]
    conn.execute(
        "INSERT INTO \"Odd ks\" SELECT * , 'v' FROM unnest(%s::text[], %s::int[])",
        ([r for r, _ in rows], [n for _, n in rows]),
    )
    audit.enable('"Odd ks"')
    t0 = now(conn)
    conn.execute("""UPDATE "Odd ks" SET v = 'changed' WHERE "n o" IN (2, 10)""")  # moves rows last
    if renamed:
        conn.execute('ALTER TABLE "Odd ks" RENAME COLUMN "n o" TO "N°"')
    key = "N°" if renamed else "n o"
    expected = conn.execute(
        sql.SQL('SELECT region, {0} FROM "Odd ks" ORDER BY region, {0}').format(sql.Identifier(key))
    ).fetchall()
    physical = conn.execute(sql.SQL('SELECT region, {} FROM "Odd ks"').format(sql.Identifier(key)))
    assert physical.fetchall() != expected  # the test means something
    for at in (t0, now(conn)):
        assert [(r["region"], r[key]) for r in audit.table_at('"Odd ks"', at)] == expected
    changed = [(d["pk"]["region"], d["pk"][key]) for d in audit.diff('"Odd ks"', t0, now(conn))]
    assert changed == [(r, n) for r, n in expected if n in (2, 10)]


def test_a_part_of_a_composite_key_selects_every_row_having_it(audit: Audit) -> None:
    """history and blame take a part of a composite key (a bare value: the first column), on
    a partitioned table as Pagila's payment; row-at needs the whole key and names what is
    missing; a column outside the key is refused."""
    conn = audit.conn
    conn.execute(
        "CREATE TABLE payment (payment_id int, payment_date date, amount numeric(5,2),"
        " PRIMARY KEY (payment_id, payment_date)) PARTITION BY RANGE (payment_date);"
        "CREATE TABLE payment_2026 PARTITION OF payment FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
    )
    audit.enable("payment")
    conn.execute(
        "INSERT INTO payment VALUES (16050, '2026-01-02', 1), (16050, '2026-02-03', 2),"
        " (16051, '2026-01-02', 3), (160500, '2026-01-02', 4)"
    )
    conn.execute("UPDATE payment SET amount = amount + 1 WHERE payment_id = 16050")
    for part in (16050, "16050", {"payment_id": "16050"}):
        changes = list(audit.history("payment", pk=part))
        assert [(c["op"], c["pk"]["payment_date"]) for c in changes] == [
            ("INSERT", "2026-01-02"), ("INSERT", "2026-02-03"),
            ("UPDATE", "2026-01-02"), ("UPDATE", "2026-02-03"),
        ]  # fmt: skip
    by_date = list(audit.history("payment", pk={"payment_date": "2026-01-02"}))
    assert sorted({c["pk"]["payment_id"] for c in by_date}) == [16050, 16051, 160500]
    whole = {"payment_id": 16050, "payment_date": "2026-02-03"}
    assert [c["op"] for c in audit.history("payment", pk=whole)] == ["INSERT", "UPDATE"]
    blame = audit.blame("payment", 16050)
    assert [(b["pk"]["payment_date"], b["column_name"], b["value"]) for b in blame] == [
        ("2026-01-02", "payment_id", 16050), ("2026-01-02", "payment_date", "2026-01-02"),
        ("2026-01-02", "amount", Decimal("2.00")),
        ("2026-02-03", "payment_id", 16050), ("2026-02-03", "payment_date", "2026-02-03"),
        ("2026-02-03", "amount", Decimal("3.00")),
    ]  # fmt: skip
    with pytest.raises(InvalidInput, match="payment_date missing"):
        audit.row_at("payment", {"payment_id": 16050}, "now")
    with pytest.raises(InvalidInput, match="amount is not one of its columns"):
        audit.history("payment", pk={"payment_id": 16050, "amount": 2})
    with pytest.raises(InvalidInput, match="no row of public.payment has the key part"):
        audit.blame("payment", 99)


def test_history_filters_and_transaction(shop: Audit) -> None:
    conn = shop.conn
    with shop.actor("alice"):
        conn.execute("INSERT INTO orders VALUES (2, 'b', 2, 's')")
        txid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE orders SET amount = 3 WHERE id = 2")
    with shop.actor("bob"):
        conn.execute("DELETE FROM orders WHERE id = 2")
    assert [c["op"] for c in shop.history("orders", pk='{"id": "2"}')] == [
        "INSERT",
        "UPDATE",
        "DELETE",
    ]
    assert [c["op"] for c in shop.history("orders", pk=2, actor="bob")] == ["DELETE"]
    assert [c["op"] for c in shop.transaction(txid)] == ["INSERT", "UPDATE"]
    assert next(iter(shop.history(since="1 hour ago", op="update")))["changed"] == ["amount"]
    assert list(shop.history(until="1 hour ago")) == []
    assert len(list(shop.history(since="yesterday", until="tomorrow"))) == 3
    with pytest.raises(InvalidInput, match="no audited change"):
        shop.transaction(1)
    for bad in ("not a time", "3 fortnights ago", "2024-13-45"):
        with pytest.raises(InvalidInput, match="not a time|unknown time unit"):
            list(shop.history(since=bad))
    with pytest.raises(InvalidInput, match="not valid JSON"):
        list(shop.history("orders", pk="{oops"))
    with pytest.raises(InvalidInput, match=r"the key of public\.orders is \(id\)"):
        list(shop.history("orders", pk='{"nope": 1}'))


def test_time_forms_are_read_by_the_server(shop: Audit) -> None:
    """Each form of a time names the instant the server's own arithmetic gives, on the same
    now() (one transaction); the session's TimeZone reads times without a zone."""
    conn = shop.conn
    conn.execute("SET TimeZone = 'Asia/Tokyo'")  # UTC+9, no daylight saving time
    utc = UTC
    epoch = datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc)  # @1700000000
    with conn.transaction():

        def server(expression: str) -> datetime:
            row = conn.execute(f"SELECT {expression}").fetchone()
            assert row is not None
            return row[0]  # type: ignore[no-any-return]

        now_ = server("now()")
        expected = {
            "2 hours ago": now_ - timedelta(hours=2),
            "2 hours 30 minutes ago": now_ - timedelta(hours=2, minutes=30),
            "1h30m ago": now_ - timedelta(hours=1, minutes=30),
            "90 min ago": now_ - timedelta(minutes=90),
            "1 day ago": now_ - timedelta(days=1),
            "1.5 days ago": now_ - timedelta(days=1, hours=12),
            "3 weeks ago": now_ - timedelta(weeks=3),
            "10s ago": now_ - timedelta(seconds=10),
            "  2 HOURS  Ago ": now_ - timedelta(hours=2),
            "P1DT2H ago": now_ - timedelta(days=1, hours=2),
            "1 day 02:00 ago": now_ - timedelta(days=1, hours=2),
            "-1 hour ago": now_ + timedelta(hours=1),
            "1 month ago": server("now() - interval '1 month'"),
            "1 year 2 mons ago": server("now() - interval '1 year 2 months'"),
            "@1700000000": epoch,
            "@ 1700000000": epoch,
            "@1700000000.5": epoch + timedelta(microseconds=500000),
            "@1700000000.123456": epoch + timedelta(microseconds=123456),
            "@-1.5": datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=utc),
            "@0": datetime(1970, 1, 1, tzinfo=utc),
            "2026-11-25T14:00:00+01:00": datetime(2026, 11, 25, 13, 0, tzinfo=utc),
            "2026-11-25T14:00:00Z": datetime(2026, 11, 25, 14, 0, tzinfo=utc),
            "2026-11-25 14:00": datetime(2026, 11, 25, 5, 0, tzinfo=utc),  # Tokyo time
            "2026-11-25T14:00:00.25": datetime(2026, 11, 25, 5, 0, 0, 250000, tzinfo=utc),
            "now": now_,
            "today": server("date_trunc('day', now())"),
            "yesterday": server("date_trunc('day', now()) - interval '1 day'"),
            "tomorrow": server("date_trunc('day', now()) + interval '1 day'"),
        }
        for text, want in expected.items():
            assert shop.instant(text) == want, text
    since = now_ - timedelta(hours=1)
    conn.execute("INSERT INTO orders VALUES (2, 'b', 2, 's')")
    assert [c["op"] for c in shop.history(since="1h30m ago")] == ["INSERT"]
    assert [c["op"] for c in shop.history(since=f"@{since.timestamp():.6f}")] == ["INSERT"]
    assert list(shop.history(until="@1700000000")) == []

    for bad in ("2 parsecs ago", "ago", "@", "@abc", "@1e3", "@1700000000 seconds", "soon"):
        with pytest.raises(InvalidInput, match="is not a time") as raised:
            shop.instant(bad)
        assert raised.value.hint is not None
        for form in ("ISO-8601", "yesterday", "ago", "@1700000000"):
            assert form in raised.value.hint, (bad, form)
    with pytest.raises(InvalidInput, match="not a usable time"):
        shop.instant("@999999999999")  # the year 33658


def test_history_last(shop: Audit) -> None:
    """``last``: the N most recent changes, oldest first; ``limit`` stays the oldest N."""
    conn = shop.conn
    for key in range(2, 7):
        with shop.actor("alice" if key % 2 else "bob"):
            conn.execute("INSERT INTO orders VALUES (%s, 'c', %s, 's')", (key, key))
    ids = [c["id"] for c in shop.history("orders")]
    assert len(ids) == 5
    assert [c["id"] for c in shop.history("orders", last=2)] == ids[-2:]
    assert [c["id"] for c in shop.history(last=5)] == ids
    assert [c["id"] for c in shop.history(last=50)] == ids
    assert list(shop.history(last=0)) == []
    assert [c["id"] for c in shop.history(limit=2)] == ids[:2]
    bob = [c["id"] for c in shop.history(actor="bob")]
    assert [c["id"] for c in shop.history(actor="bob", last=1)] == bob[-1:]
    assert [c["pk"] for c in shop.history("orders", pk=6, last=1)] == [{"id": 6}]
    with pytest.raises(InvalidInput, match="--limit and --last cannot be combined"):
        list(shop.history(limit=2, last=2))
    with pytest.raises(InvalidInput, match="--last must be zero or more"):
        list(shop.history(last=-1))


def test_reconstruction_refuses_what_it_cannot_know(shop: Audit, dsn: str) -> None:
    conn = shop.conn
    enabled_at = conn.execute("SELECT enabled_at FROM audit.tracked_table").fetchone()[0]  # type: ignore[index]
    conn.execute("SET TimeZone = 'Asia/Kathmandu'")  # messages print times in UTC all the same
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"
    with pytest.raises(
        InvalidInput, match=f"history of public.orders exists from {iso} only; {iso}"
    ):
        shop.row_at("orders", 1, enabled_at - timedelta(seconds=1))
    conn.execute("RESET TimeZone")
    with pytest.raises(InvalidInput, match="already exists"):
        shop.table_at_into("orders", "now", "orders")
    conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    with pytest.raises(InvalidInput, match="not audited"):
        shop.row_at("other", 1, "now")
    t = now(conn)
    shop.enable("orders", capture_truncate=False)
    conn.execute("TRUNCATE orders")
    with pytest.raises(TableNotSuitable, match="TRUNCATE .* recorded without its rows"):
        list(shop.table_at("orders", t))
    shop.disable("orders")
    with pytest.raises(TableNotSuitable, match="capture of public.orders is off"):
        shop.row_at("orders", 1, t)


def test_table_at_into_keeps_column_types(shop: Audit) -> None:
    conn = shop.conn
    t0 = now(conn)
    conn.execute("DELETE FROM orders")
    assert shop.table_at_into("orders", t0, "public.orders_then") == 1
    types = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'orders_then'::regclass AND attnum > 0 ORDER BY attnum"
    ).fetchall()
    assert types == [
        ("id", "integer"),
        ("customer", "text"),
        ("amount", "numeric(10,2)"),
        ("secret", "text"),
    ]
    assert conn.execute("SELECT id, customer FROM orders_then").fetchall() == [
        (1, "before auditing")
    ]


# --------------------------------------------------------------------------- property test

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
"""

COLUMNS = """
    id int PRIMARY KEY, n numeric, f float8, r real, t text, ts timestamptz, tsl timestamp,
    iv interval, d date, b bytea, arr int[], tarr text[], j jsonb, u uuid, e mood, dom positive,
    c pair, flag boolean, rng int4range, big bigint
"""

_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# jsonb strings cannot hold U+0000.
_json_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5
)


def _plain_decimal(d: Decimal) -> bool:
    """Decimals a numeric column holds as typed: not astronomically large or small."""
    exponent = d.as_tuple().exponent
    return abs(d) < Decimal("1e30") and isinstance(exponent, int) and exponent >= -20


_value_strategies: dict[str, Any] = {
    "n": st.one_of(
        st.none(),
        st.decimals(allow_nan=False, allow_infinity=False).filter(_plain_decimal),
        st.just(Decimal("NaN")),
    ),
    "f": st.one_of(_finite, st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0])),
    "r": st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False), st.just(float("inf"))
    ),
    "t": st.one_of(
        st.none(),
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=30,
        ),
        st.just("x" * 5000),
    ),
    "ts": st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
    ),
    "tsl": st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    "iv": st.timedeltas(min_value=timedelta(days=-9999), max_value=timedelta(days=9999)),
    "d": st.dates(),
    "b": st.binary(max_size=20),
    "arr": st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=5),
    "tarr": st.lists(st.text(alphabet='ab"\\{} ,é', max_size=4), max_size=3),
    "j": st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), _json_text),
        lambda ch: st.lists(ch, max_size=3) | st.dictionaries(_json_text, ch, max_size=3),
        max_leaves=6,
    ),
    "u": st.uuids(),
    "e": st.sampled_from(["sad", "ok", "happy"]),
    "dom": st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1e9"), places=3),
    "c": st.tuples(st.integers(-100, 100), st.text(alphabet='ab ,()"', max_size=4)),
    "flag": st.one_of(st.none(), st.booleans()),
    "big": st.integers(-(2**63), 2**63 - 1),
}


def _adapt(column: str, value: Any) -> Any:
    if column == "j":
        # A top-level JSON null would come back as SQL NULL: row images cannot tell them apart
        # (documented in the README), so the workload stores SQL NULL for None.
        return None if value is None else psycopg.types.json.Jsonb(value)
    if column == "c":
        return sql.SQL("ROW({}, {})::pair").format(sql.Literal(value[0]), sql.Literal(value[1]))
    return value


row_strategy = st.fixed_dictionaries(_value_strategies)
operation = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 12), row_strategy),
    st.tuples(st.just("update"), st.integers(1, 12), row_strategy),
    st.tuples(st.just("move"), st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.just("delete"), st.integers(1, 12), st.none()),
    st.tuples(st.just("truncate"), st.none(), st.none()),
)
transaction = st.tuples(st.lists(operation, min_size=1, max_size=4), st.booleans())


def _apply(conn: psycopg.Connection[Any], table: sql.Identifier, op: tuple[str, Any, Any]) -> None:
    kind, key, arg = op
    if kind in ("insert", "update"):
        cols = list(arg)
        values = sql.SQL(", ").join(
            (v if isinstance(v := _adapt(c, arg[c]), sql.Composable) else sql.Literal(v))
            for c in cols
        )
        names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        if kind == "insert":
            stmt = sql.SQL(
                "INSERT INTO {t} (id, {n}) SELECT {k}, {v} WHERE NOT EXISTS (SELECT FROM {t} WHERE id = {k})"
            ).format(t=table, n=names, k=sql.Literal(key), v=values)
        else:
            stmt = sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE id = {}").format(
                table, names, values, sql.Literal(key)
            )
    elif kind == "move":
        stmt = sql.SQL(
            "UPDATE {t} SET id = CASE id WHEN {a} THEN {b} ELSE {a} END WHERE id IN ({a}, {b})"
        ).format(t=table, a=sql.Literal(key), b=sql.Literal(arg))
    elif kind == "delete":
        stmt = sql.SQL("DELETE FROM {} WHERE id = {}").format(table, sql.Literal(key))
    else:
        stmt = sql.SQL("TRUNCATE {}").format(table)
    conn.execute(stmt)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    workload=st.lists(transaction, min_size=1, max_size=8),
    zone=st.sampled_from(["UTC", "Asia/Kathmandu", "America/St_Johns"]),
)
def test_table_at_equals_every_snapshot(
    audit: Audit, workload: list[tuple[list[Any], bool]], zone: str
) -> None:
    conn = audit.conn
    if conn.execute("SELECT to_regtype('mood')").fetchone() == (None,):
        conn.execute(TYPES_DDL)
    name = f"p_{uuid.uuid4().hex[:10]}"
    table = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} ({}) ").format(table, sql.SQL(COLUMNS)))
    # The key is deferrable so that swaps of two keys in one statement are possible.
    conn.execute(
        sql.SQL("ALTER TABLE {t} DROP CONSTRAINT {c}, ADD PRIMARY KEY (id) DEFERRABLE").format(
            t=table, c=sql.Identifier(f"{name}_pkey")
        )
    )
    audit.enable(name)
    conn.execute(sql.SQL("SET TIME ZONE {}").format(sql.Literal(zone)))
    snapshots: list[tuple[str, datetime]] = []
    for ops, commit in workload:
        changes_before = conn.execute("SELECT count(*) FROM audit.change").fetchone()
        try:
            with conn.transaction():
                for op in ops:
                    _apply(conn, table, op)
                if not commit:
                    raise _Rollback
        except _Rollback:
            assert conn.execute("SELECT count(*) FROM audit.change").fetchone() == changes_before
        except psycopg.errors.UniqueViolation:
            pass  # a move onto an existing key: rolled back, nothing recorded either
        snap = f"{name}_s{len(snapshots)}"
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}").format(sql.Identifier(snap), table)
        )
        snapshots.append((snap, now(conn)))
    for snap, at in snapshots:
        assert_same_rows(
            conn, sql.SQL("SELECT * FROM {}").format(sql.Identifier(snap)), table_at_sql(name, at)
        )
    assert_same_rows(conn, sql.SQL("SELECT * FROM {}").format(table), table_at_sql(name, now(conn)))
    # Row by row too, for the first snapshot: row_at gives each row's JSON, absent keys give None.
    # (JSON of timestamps is written in UTC by the log and by row_at, whatever the session zone.)
    conn.execute("SET TIME ZONE 'UTC'")
    snap, at = snapshots[0]
    live = {
        r[0]: r[1]
        for r in conn.execute(
            sql.SQL("SELECT id, to_jsonb(s.*) FROM {} s").format(sql.Identifier(snap))
        )
    }
    for key in range(1, 13):
        got = conn.execute(
            sql.SQL("SELECT audit.row_at({}::regclass, {}, {})").format(
                sql.Literal(name), sql.Literal(json.dumps({"id": key})), sql.Literal(at)
            )
        ).fetchone()
        assert got is not None and got[0] == live.get(key)


class _Rollback(Exception):
    pass


# ----------------------------------------------------------------- changed columns

_JSON_SCALARS = ["null", "true", "false", "0", "1", "1.0", "1.50", "1.5", "-2", '""', '"a"', '"A"']
_json_value = st.recursive(
    st.sampled_from(_JSON_SCALARS),
    lambda inner: (
        st.lists(inner, max_size=2).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.dictionaries(st.sampled_from(['"a"', '"b"']), inner, max_size=2).map(
            lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"
        )
    ),
    max_leaves=4,
)
_image = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(['"id"', '"a"', '"B"', '"b"', '"é"', '"long name"']),
        _json_value,
        max_size=6,
    ).map(lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"),
)
# The definition of changed columns, as first written (a UNION of both images' keys).
_CHANGED_REFERENCE = """
SELECT audit.changed_columns(%(o)s::jsonb, %(n)s::jsonb),
       ARRAY(SELECT k FROM (SELECT jsonb_object_keys(%(o)s::jsonb)
                            UNION SELECT jsonb_object_keys(%(n)s::jsonb)) AS u(k)
              WHERE %(o)s::jsonb -> k IS DISTINCT FROM %(n)s::jsonb -> k ORDER BY k)
"""


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=_image, new=_image)
def test_changed_columns_are_the_keys_whose_values_differ(
    audit: Audit, old: str | None, new: str | None
) -> None:
    """``audit.changed_columns`` (history's ``changed``) gives what its first definition gave
    for any two images, SQL NULL included: equal numbers in other notations (1, 1.0) are not
    a change, a key in one image only is."""
    row = audit.conn.execute(_CHANGED_REFERENCE, {"o": old, "n": new}).fetchone()
    assert row is not None
    assert row[0] == row[1], (old, new)
