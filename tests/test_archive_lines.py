"""History with an archive (issue 16): DuckDB reads and renders the archived changes
(pgaudit_tool.archive_lines), merged by id with the server's; JSON output must be byte for byte
what the server wrote before the history left the log, and Python values the same values,
for every kind of value, name and filter, and for ids of archived and live changes that
interleave.
"""

from __future__ import annotations

import io
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgaudit_tool import Audit
from tests.conftest import PgServer, _release_database
from tests.test_archive import short_partitions, wait_until

Conn = psycopg.Connection[Any]
ODD = '"Odd ""Schema"""."select"'
# Every ASCII character but NUL, and characters beyond ASCII, in a value and in the actor.
EVERY_CHAR = "".join(chr(c) for c in range(1, 128)) + " é ü \u2028 😀 \\u001F \\\\u00"

# Updates whose changed columns depend on jsonb equality (numbers by value) and on numbers
# DuckDB would read inexactly (17 digits); and updates changing nothing.
UPDATES = [
    ('"user" = 1.00', "id = 1"),  # 1.0 -> 1.00: equal for jsonb, not changed
    ('"user" = 1', "id = 1"),  # 1.00 -> 1: equal too
    ('"user" = 1.5', "id = 2"),
    ('"user" = 0.10000000000000000001', "id = 2"),
    ('"user" = 0.10000000000000000002', "id = 2"),  # one double, two numbers
    ('"user" = 100000000000000000000001', "id = 3"),
    ('"user" = 100000000000000000000002', "id = 3"),
    ('"a_b" = 12345678901234568', "id = 3"),  # 17 digits, one apart
    ('"ü" = \'{"x": 1.00, "y": [1, 2]}\'', "id = 4"),  # nested 1.0 -> 1.00: not changed
    ('"ü" = \'{"x": 1.0, "y": [1, 3]}\'', "id = 5"),
    ('"Mixed Case" = "Mixed Case" || E\'\\\\u001f\\x1f\'', "id = 6"),
    ('"B" = NOT "B", "with""quote" = ARRAY[\'a,b\', NULL]', "id <= 3"),
    ('"ab" = 0.1, "dot.ted" = NULL', "id = 2"),  # 0.1 again, a value to NULL
    ("id = id", "true"),  # nothing changes: an empty list
    ('"$dollar" = "$dollar" + interval \'1 microsecond\'', "id = 1"),
]


def _write(conn: Conn, first: int) -> None:
    conn.execute(
        f'INSERT INTO {ODD} SELECT g, %s || g, 1.0, \'{{"x": 1.0, "y": [1, 2]}}\','
        " 12345678901234567, 0.1, g %% 2 = 0, ARRAY['q\"', 'r'], now(), '\\x00ff'::bytea"
        " FROM generate_series(%s::int, %s::int) AS g",
        (EVERY_CHAR, first, first + 5),
    )
    for assignment, where in UPDATES:
        conn.execute(f"UPDATE {ODD} SET {assignment} WHERE ({where}) AND id >= {first}")
    conn.execute(f"DELETE FROM {ODD} WHERE id = {first + 5}")
    conn.execute("INSERT INTO plain SELECT g, 'p' || g FROM generate_series(%s::int, %s::int) g",
                 (first, first + 2))  # fmt: skip
    conn.execute("TRUNCATE plain")


def _long_transaction(dsn: str, started: threading.Event, go_on: threading.Event) -> None:
    """A transaction that starts in the first partition (its rows stay there) and writes
    again after others wrote in the second: archived and live ids interleave."""
    with psycopg.connect(dsn) as other:
        other.execute("SELECT set_config('pgaudit.actor', 'long', true)")
        other.execute("INSERT INTO side VALUES (1)")
        started.set()
        assert go_on.wait(30)
        other.execute("INSERT INTO side VALUES (2)")


def _outputs(audit: Audit, filters: list[dict[str, Any]], **archive: Any) -> list[bytes]:
    """What history gives for each filter: as jsonl, as json, and as Python values (their
    repr: types, Decimal digits and time zones count, not only equality)."""
    found = []
    for fmt in ("jsonl", "json"):
        for flt in filters:
            out = io.BytesIO()
            audit.export_history(out, fmt, **flt, **archive)
            found.append(out.getvalue())
    for flt in filters:
        found.append(repr(list(audit.history(**flt, **archive))).encode())
    return found


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("duckdb"), reason="needs pgaudit-tool[archive]"
)
def test_json_history_read_from_the_archive_is_what_the_server_wrote(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    with Audit.connect(dsn) as audit:
        audit.install(partition_interval="1 minute")
        audit.conn.execute("SET TimeZone = 'Asia/Kolkata'")  # Python values in the session's zone
        conn.execute('CREATE SCHEMA "Odd ""Schema"""')
        conn.execute(
            f'CREATE TABLE {ODD} (id int PRIMARY KEY, "Mixed Case" text, "user" numeric,'
            ' "ü" jsonb, "a_b" bigint, "ab" float8, "B" bool, "with""quote" text[],'
            ' "$dollar" timestamptz, "dot.ted" bytea)'
        )
        conn.execute("CREATE TABLE plain (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE side (id int PRIMARY KEY)")
        for table in (ODD, "plain", "side"):
            audit.enable(table)
        starts = short_partitions(conn)
        conn.execute("SELECT set_config('pgaudit.actor', %s, false)", (EVERY_CHAR,))
        conn.execute("SELECT set_config('pgaudit.context', %s, false)",
                     ('{"ticket": "T-1\\n", "n": 1.50}',))  # fmt: skip
        _write(conn, 1)
        started, go_on = threading.Event(), threading.Event()
        long = threading.Thread(target=_long_transaction, args=(dsn, started, go_on))
        long.start()
        assert started.wait(30)
        wait_until(starts[1] + timedelta(milliseconds=50))
        _write(conn, 100)  # live: lower ids than the long transaction's second row
        go_on.set()
        long.join()
        conn.execute("SELECT set_config('pgaudit.actor', 'bob', false)")
        _write(conn, 200)
        audit.checkpoint()
        txid = conn.execute("SELECT txid::text::bigint FROM audit.transaction WHERE actor = 'long'").fetchone()[0]  # type: ignore[index]  # fmt: skip
        middle = conn.execute("SELECT min(at) FROM audit.history WHERE actor = 'bob'").fetchone()[0]  # type: ignore[index]  # fmt: skip
        filters: list[dict[str, Any]] = [
            {},
            {"table": ODD},
            {"table": ODD, "pk": 3},
            {"table": "plain", "op": "truncate"},
            {"actor": EVERY_CHAR},
            {"actor": "long"},
            {"db_user": "postgres", "op": "UPDATE"},
            {"txid": txid},
            {"since": starts[0].isoformat(), "until": middle.isoformat()},
            {"since": (starts[1] - timedelta(milliseconds=1)).isoformat()},
            {"limit": 3},
            {"last": 40},
            {"table": ODD, "last": 2},
            {"actor": "nobody"},
        ]
        before = _outputs(audit, filters)
        directory = tmp_path / "archive"
        result = audit.archive(starts[1], directory, drop=True, confirm=lambda plan: True)
        assert any(p.status == "dropped" for p in result.parts), result
        assert _outputs(audit, [{}]) != before[:1]  # some history left the log
    with Audit.connect(dsn) as reader:
        reader.conn.execute("SET TimeZone = 'Asia/Kolkata'")
        after = _outputs(reader, filters, archive=directory)
        # DuckDB rendered the archived rows: nothing was loaded into the server.
        loaded = reader.conn.execute(
            "SELECT to_regclass('pg_temp.pgaudit_archived_change')"
        ).fetchone()
        assert loaded == (None,)
    for i, (want, got) in enumerate(zip(before, after, strict=True)):
        assert got == want, (i % len(filters), ["jsonl", "json", "values"][i // len(filters)])


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("duckdb"), reason="needs pgaudit-tool[archive]"
)
def test_duckdb_memory_is_bounded_and_its_spill_directory_removed() -> None:
    """A whole archive read or a partition sorted must not take the machine's memory: DuckDB
    gets a limit and spills to a directory of its own, gone afterwards."""
    from pgaudit_tool.archive import duckdb_module, duckdb_session

    setting = "SELECT value FROM duckdb_settings() WHERE name = ?"
    with duckdb_session() as con:
        limit = con.execute(setting, ["memory_limit"]).fetchone()
        spill = Path(con.execute(setting, ["temp_directory"]).fetchone()[0])  # type: ignore[index]
        assert spill.is_dir()
    assert not spill.exists()
    default = duckdb_module().connect().execute(setting, ["memory_limit"]).fetchone()
    assert limit is not None and limit != default and limit[0].endswith(("MiB", "GiB"))


#: Column names whose order under an ICU collation ("und": punctuation first, case and accents
#: second) is not their byte order (B Z _x a b e é).
ICU_COLUMNS = ("b", "B", "a", "é", "Z", "e", "_x")


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("duckdb"), reason="needs pgaudit-tool[archive]"
)
def test_changed_columns_from_the_archive_keep_the_databases_collation(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """History lists changed columns in the order of the database's collation; read from the
    archive, the server ranks them (DuckDB sorts bytes): in a database whose default collation
    is ICU's, the lists are the same as before the history left the log."""
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        icu = admin.execute(
            "SELECT count(*) FROM pg_collation WHERE collprovider = 'i' AND collname = 'und-x-icu'"
        ).fetchone()
        if pg_server.major < 15 or not icu or not icu[0]:
            pytest.skip("this server has no ICU collations (built without ICU)")
        name = f"icu_{uuid.uuid4().hex[:8]}"
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
                " LOCALE_PROVIDER icu ICU_LOCALE 'und'"
            ).format(sql.Identifier(name))
        )
    try:
        dsn = pg_server.dsn_for(name)
        columns = ", ".join(f'"{c}" int' for c in ICU_COLUMNS)
        updates = ", ".join(f'"{c}" = "{c}" + 1' for c in ICU_COLUMNS)
        with Audit.connect(dsn) as audit, psycopg.connect(dsn, autocommit=True) as conn:
            audit.install(partition_interval="1 minute")
            conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, {columns})")
            audit.enable("t")
            starts = short_partitions(conn)
            for first in (1, 100):
                if first == 100:
                    wait_until(starts[1] + timedelta(milliseconds=50))
                conn.execute(
                    f"INSERT INTO t SELECT g, {', '.join('0' for _ in ICU_COLUMNS)}"
                    " FROM generate_series(%s::int, %s::int) g",
                    (first, first + 2),
                )
                conn.execute(f"UPDATE t SET {updates} WHERE id >= %s", (first,))
            audit.checkpoint()
            before = _outputs(audit, [{}, {"op": "UPDATE"}])
            changed = [c["changed"] for c in audit.history(op="UPDATE")]
            assert changed[0] == ["_x", "a", "b", "B", "e", "é", "Z"]  # not byte order
            result = audit.archive(starts[1], tmp_path / "a", drop=True, confirm=lambda p: True)
            assert any(p.status == "dropped" for p in result.parts), result
            after = _outputs(audit, [{}, {"op": "UPDATE"}], archive=tmp_path / "a")
        assert after == before
    finally:
        _release_database(pg_server, name)
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
