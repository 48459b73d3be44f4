"""The partitioned log (schema revision 0009, issue 16): partitions made ahead, rows that land
in the default partitions moved out by maintain, settings changeable, bad settings refused, the
upgrade from an unpartitioned log keeping every row and the chain, and time bounds that skip
partitions."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgaudit_tool import Audit
from pgaudit_tool.errors import InvalidInput
from tests.measure_upgrade import Writer
from tests.released import install_released
from tests.test_cli import failed, invoke, ok

Conn = psycopg.Connection[Any]


def ranges(conn: Conn, log: str = "change") -> list[tuple[datetime, datetime]]:
    rows = conn.execute(
        "SELECT lower, upper FROM audit.partitions() WHERE log = %s AND lower IS NOT NULL", (log,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def placement(conn: Conn) -> list[tuple[str, str]]:
    """(partition of each change row, partition of its transaction row)."""
    rows = conn.execute(
        "SELECT c.tableoid::regclass::text, x.tableoid::regclass::text"
        " FROM audit.change AS c JOIN audit.transaction AS x ON x.txid = c.txid ORDER BY c.id"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def in_defaults(conn: Conn) -> int:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM audit.change_default)"
        " + (SELECT count(*) FROM audit.transaction_default)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_install_makes_aligned_partitions_ahead_and_rows_land_in_them(dsn: str, conn: Conn) -> None:
    ok(invoke(dsn, "install", "--partition-interval", "1 minute", "--partitions-ahead", "4"))
    made = ranges(conn)
    assert made == ranges(conn, "transaction")
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    assert made[0][0] <= now < made[0][1] and made[-1][1] >= now + timedelta(minutes=4)
    for lower, upper in made:
        assert upper - lower == timedelta(minutes=1)
        assert lower.astimezone(UTC).second == 0 and lower.microsecond == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(made))
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("SELECT audit.enable('t')")
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    for change_part, tx_part in placement(conn):
        assert change_part.startswith("audit.change_p")
        assert change_part.removeprefix("audit.change_p") == tx_part.removeprefix(
            "audit.transaction_p"
        )
    assert in_defaults(conn) == 0
    listed = json.loads(ok(invoke(dsn, "partitions", "--format", "json")))
    assert {p["log"] for p in listed} == {"change", "transaction"}
    assert sum(p["lower"] is None for p in listed) == 2  # the two default partitions


def drop_current_partitions(conn: Conn) -> None:
    """Partitions ran out: the current pair is gone, so new history goes to the defaults."""
    for log in ("change", "transaction"):
        current = conn.execute(
            "SELECT partition FROM audit.partitions() WHERE log = %s AND now() >= lower"
            " AND now() < upper",
            (log,),
        ).fetchone()
        assert current is not None
        conn.execute(f"DROP TABLE {current[0]}")


def audited_t_out_of_partitions(audit: Audit, conn: Conn) -> None:
    """Daily partitions, table t audited, the current pair dropped: t's history goes to the
    defaults."""
    audit.install(partition_interval="1 day")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    audit.enable("t")
    drop_current_partitions(conn)


def test_maintain_moves_rows_out_of_the_default_partitions(dsn: str, conn: Conn) -> None:
    with Audit.connect(dsn) as audit:
        audited_t_out_of_partitions(audit, conn)
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE t SET v = 'c' WHERE id = 1")
        assert in_defaults(conn) == 3 + 2
        before = [r for r in audit.history("t")]
        problems = audit.doctor()
        assert any("default partitions" in p["problem"] for p in problems)
        done = json.loads(ok(invoke(dsn, "maintain", "--format", "json")))
        created = [d for d in done if d["action"] == "created partitions"]
        assert [d["rows"] for d in created] == [5]
        assert in_defaults(conn) == 0
        assert [r for r in audit.history("t")] == before
        assert not [p for p in audit.doctor() if p["object"].startswith("audit.")]
        again = json.loads(ok(invoke(dsn, "maintain", "--format", "json")))
        assert [d for d in again if d["action"] == "created partitions"] == []


def test_a_long_pause_leaves_no_run_of_empty_partitions(dsn: str, conn: Conn) -> None:
    """After partitions ran out long ago, maintain starts again at now, not at the old end."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 hour")
        for log in ("change", "transaction"):
            for (name,) in conn.execute(
                "SELECT partition FROM audit.partitions() WHERE log = %s AND lower IS NOT NULL",
                (log,),
            ).fetchall():
                conn.execute(f"DROP TABLE {name}")
        conn.execute(
            "SELECT audit._partition_add(now() - interval '30 days', now() - interval '29 days')"
        )
        warned = [p for p in audit.doctor() if p["object"] == "audit.change"]
        assert warned and "ended" in warned[0]["problem"]
        audit.maintain()
        made = ranges(conn)
        assert len(made) == 1 + 4  # the old one, then the current hour and 3 ahead
        assert not [p for p in audit.doctor() if p["object"] == "audit.change"]


def test_the_interval_can_change_for_future_partitions(dsn: str, conn: Conn) -> None:
    ok(invoke(dsn, "install", "--partition-interval", "1 hour", "--partitions-ahead", "1"))
    first = ranges(conn)
    ok(invoke(dsn, "install", "--partition-interval", "1 day", "--partitions-ahead", "3"))
    setting = conn.execute("SELECT partition_interval, ahead FROM audit.partitioning").fetchone()
    assert setting == (timedelta(days=1), 3)
    after = ranges(conn)
    assert after[: len(first)] == first  # existing partitions keep their ranges
    later = after[len(first) :]
    assert later and all(b[0] == a[1] for a, b in itertools.pairwise(after))
    # Whole days from the first boundary on (the first new one may be shorter, to align).
    assert all(u - lo == timedelta(days=1) for lo, u in later[1:])
    assert all(lo.astimezone(UTC).hour == 0 for lo, _ in later[1:])


@pytest.mark.parametrize("interval", ["30 seconds", "1 month 2 days", "soon", "-1 day"])
def test_bad_intervals_are_refused_and_change_nothing(dsn: str, conn: Conn, interval: str) -> None:
    failed(invoke(dsn, "install", "--partition-interval", interval), 2, "partition interval")
    exists = conn.execute("SELECT to_regclass('audit.change') IS NOT NULL").fetchone()
    assert exists == (False,)
    ok(invoke(dsn, "install"))
    failed(invoke(dsn, "install", "--partition-interval", interval), 2, "partition interval")
    assert conn.execute("SELECT partition_interval FROM audit.partitioning").fetchone() == (
        timedelta(days=7),
    )
    with psycopg.connect(dsn) as other, pytest.raises(psycopg.DataError):
        other.execute("SELECT audit.set_partitioning(%s::interval)", (interval,))


@pytest.mark.parametrize(
    ("at", "interval", "floor", "following"),
    [
        ("2026-03-15 12:34:56+00", "1 month", "2026-03-01 00:00+00", "2026-04-01 00:00+00"),
        ("2026-03-15 12:34:56+00", "3 months", "2026-01-01 00:00+00", "2026-04-01 00:00+00"),
        ("2026-12-31 23:59:59+00", "1 year", "2026-01-01 00:00+00", "2027-01-01 00:00+00"),
        ("1999-12-15 00:00:00+00", "1 month", "1999-12-01 00:00+00", "2000-01-01 00:00+00"),
        # A day of a DST change in New York: still 24 hours, from UTC midnight.
        ("2026-03-08 06:30:00+00", "1 day", "2026-03-08 00:00+00", "2026-03-09 00:00+00"),
        ("2026-12-02 10:00:00+00", "1 week", "2026-11-30 00:00+00", "2026-12-07 00:00+00"),
        ("2026-12-02 10:07:30+00", "5 minutes", "2026-12-02 10:05+00", "2026-12-02 10:10+00"),
    ],
)
def test_bounds_are_aligned_in_utc_whatever_the_session_zone(
    audit: Audit, conn: Conn, at: str, interval: str, floor: str, following: str
) -> None:
    conn.execute("SET timezone = 'America/New_York'")
    got = conn.execute(
        "SELECT audit._partition_floor(%s::timestamptz, %s::interval) = %s::timestamptz,"
        " audit._partition_next(%s::timestamptz, %s::interval) = %s::timestamptz",
        (at, interval, floor, at, interval, following),
    ).fetchone()
    assert got == (True, True)


def test_upgrade_from_the_unpartitioned_log_keeps_every_row_and_the_chain(
    dsn: str, conn: Conn
) -> None:
    install_released(dsn, "0008")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("SELECT audit.enable('t')")
    conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) AS g")
    conn.execute("SELECT audit.seal()")
    conn.execute("UPDATE t SET v = v || '!' WHERE id % 5 = 0")
    conn.execute("DELETE FROM t WHERE id = 7")
    old_changes = conn.execute("SELECT * FROM audit.change ORDER BY id").fetchall()
    old_transactions = conn.execute("SELECT * FROM audit.transaction ORDER BY txid").fetchall()
    with Audit.connect(dsn) as audit:
        assert audit.install().before == "0008"
        new_changes = conn.execute(
            "SELECT id, txid, relid, schema_name, table_name, op, role, statement_at, clock_at,"
            " pk, old, new FROM audit.change ORDER BY id"
        ).fetchall()
        assert new_changes == old_changes
        assert (
            conn.execute("SELECT * FROM audit.transaction ORDER BY txid").fetchall()
            == old_transactions
        )
        assert in_defaults(conn) == 0
        assert audit.verify() == []
        conn.execute("INSERT INTO t VALUES (100, 'after')")
        newest = conn.execute("SELECT max(id) FROM audit.change").fetchone()
        assert newest is not None and newest[0] == old_changes[-1][0] + 1
        assert audit.checkpoint()["changes"] == 1 + 10 + 1
        assert audit.verify() == []
        assert to_regclass(conn, "audit.change_0008") is None
        for change_part, tx_part in placement(conn):
            assert change_part.removeprefix("audit.change_p") == tx_part.removeprefix(
                "audit.transaction_p"
            )


def to_regclass(conn: Conn, name: str) -> str | None:
    row = conn.execute("SELECT to_regclass(%s)::text", (name,)).fetchone()
    return None if row is None else row[0]


def test_a_time_bound_skips_partitions(dsn: str, conn: Conn) -> None:
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 day")
        conn.execute(
            "SELECT audit._partition_add(now() - interval '30 days', now() - interval '29 days')"
        )
        bound = datetime.now(UTC) - timedelta(days=20)
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT * FROM audit.history WHERE at < %s AND transaction_started_at < %s",
                (bound, bound),
            ).fetchall()
        )
        # Of the change partitions, the old one and the default; none of the current ones.
        assert plan.count("on change_p") == 1 and "on change_default" in plan, plan
        assert len(ranges(conn)) == 1 + 4


def test_the_upgrade_makes_audited_writes_wait_and_none_fails(dsn: str, conn: Conn) -> None:
    """Writes to audited tables during the upgrade wait for it, then run with the new capture
    code: none fails (one that had entered the old capture code would) and none is lost."""
    install_released(dsn, "0008")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("SELECT audit.enable('t')")
    conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 2000) AS g")
    writer = Writer(dsn)
    writer.start()
    try:
        time.sleep(0.5)
        with Audit.connect(dsn) as audit:
            assert audit.install().after == "0009"
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.errors == []
    pings = conn.execute("SELECT count(*) FROM pings").fetchone()
    logged = conn.execute(
        "SELECT count(*) FROM audit.change WHERE relid = 'pings'::regclass"
    ).fetchone()
    assert pings == logged and pings is not None and pings[0] == writer.count > 20


def test_maintain_never_makes_audited_writes_fail_or_lose_rows(dsn: str, conn: Conn) -> None:
    """Partitions are attached while writers write: none waits for long, fails or loses a row."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 hour", partitions_ahead=1)
        writer = Writer(dsn)
        writer.start()
        try:
            time.sleep(0.3)
            for ahead in range(2, 8):
                conn.execute("SELECT audit.set_partitioning(NULL, %s)", (ahead,))
                assert [d["action"] for d in audit.maintain()].count("created partitions") >= 1
            time.sleep(0.3)
        finally:
            writer.stop.set()
            writer.join()
    assert writer.errors == [] and writer.count > 10
    assert writer.longest < 2.0
    pings = conn.execute("SELECT count(*) FROM pings").fetchone()
    logged = conn.execute(
        "SELECT count(*) FROM audit.change WHERE relid = 'pings'::regclass"
    ).fetchone()
    assert pings == logged == (writer.count,)


def test_maintain_moves_rows_out_of_the_defaults_while_writers_write_there(
    dsn: str, conn: Conn
) -> None:
    """Partitions ran out and writers keep writing into the defaults: maintain still gives the
    current range its partitions (rows written while it moves the others follow them), no write
    fails, none is lost, none stays in the defaults."""
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 day")
        drop_current_partitions(conn)
        first = Writer(dsn, pause=0)
        first.start()
        writers = [first]
        try:
            while first.count < 50:
                time.sleep(0.05)
            writers += [Writer(dsn, pause=0) for _ in range(2)]
            for writer in writers[1:]:
                writer.start()
            time.sleep(0.3)
            assert in_defaults(conn) > 0
            done = audit.maintain()
            time.sleep(0.3)
        finally:
            for writer in writers:
                writer.stop.set()
            for writer in writers:
                writer.join()
    assert next(d["rows"] for d in done if d["action"] == "created partitions") > 0
    assert [e for w in writers for e in w.errors] == []
    assert in_defaults(conn) == 0
    pings = conn.execute("SELECT count(*) FROM pings").fetchone()
    logged = conn.execute(
        "SELECT count(*) FROM audit.change WHERE relid = 'pings'::regclass"
    ).fetchone()
    assert pings == logged == (sum(w.count for w in writers),)


def test_a_transaction_breaking_history_before_its_first_change_waits_for_maintain(
    dsn: str, conn: Conn
) -> None:
    """A DDL transaction records a break in history (a transaction row) before it writes any
    change, while maintain moves rows out of the defaults under its lock on the log: both take
    the log's tables in capture's order (changes, then transactions), so one waits for the
    other and neither is cancelled as a deadlock."""
    with Audit.connect(dsn) as audit:
        audited_t_out_of_partitions(audit, conn)
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        assert in_defaults(conn) > 0
    done: list[Any] = []

    def maintain() -> None:
        try:
            with Audit.connect(dsn) as other:
                done.append(other.maintain())
        except Exception as exc:  # reported by the assertion below
            done.append(exc)

    with psycopg.connect(dsn) as ddl:
        ddl.execute("ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id, v)")
        assert ddl.execute("SELECT count(*) FROM audit.history_break").fetchone() == (1,)
        thread = threading.Thread(target=maintain)
        thread.start()
        time.sleep(0.5)  # maintain is waiting for the log (with the old order: holds half)
        ddl.execute("INSERT INTO t VALUES (2, 'b')")
        time.sleep(1.5)  # past deadlock_timeout: a deadlock would be found by now
        ddl.commit()
    thread.join(30)
    assert len(done) == 1 and not isinstance(done[0], Exception), done
    assert in_defaults(conn) == 0
    assert conn.execute(
        "SELECT count(*) FROM audit.change WHERE relid = 't'::regclass"
    ).fetchone() == (2,)


def test_bad_partitions_ahead_is_refused(dsn: str, conn: Conn) -> None:
    with Audit.connect(dsn) as audit:
        with pytest.raises(InvalidInput, match="from 1 to 1000"):
            audit.install(partitions_ahead=0)
        assert conn.execute("SELECT to_regclass('audit.change')").fetchone() == (None,)
        audit.install()
        with pytest.raises(InvalidInput, match="from 1 to 1000"):
            audit.install(partitions_ahead=1001)
    result = invoke(dsn, "install", "--partitions-ahead", "0")
    assert result.exit_code == 2 and "--partitions-ahead" in result.stderr
