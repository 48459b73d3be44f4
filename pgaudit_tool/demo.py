"""``pgaudit-tool demo``: the whole job on sample data, on an embedded server by default.

Creates the schema ``pgaudit_demo`` (two tables, one with an odd quoted name), installs the audit
schema, enables capture (excluding a password column), makes changes as two application users
and prints the history.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from psycopg import sql

from pgaudit_tool.api import Audit
from pgaudit_tool.connection import LIBPQ_ENV_VARS
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.history import PEOPLE_COLUMNS, for_people
from pgaudit_tool.output import render, to_json_text

DEMO_SCHEMA = "pgaudit_demo"
DEMO_COLUMNS = ("id", "table", "op", "pk", "changed", "new", "actor", "db_user", "role", "at")

_SETUP = """
CREATE SCHEMA pgaudit_demo;
CREATE TABLE pgaudit_demo.customers (
    id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL,
    password_hash text
);
CREATE TABLE pgaudit_demo."Order Items" (
    order_no   integer,
    line       integer,
    customer   integer NOT NULL REFERENCES pgaudit_demo.customers,
    product    text NOT NULL,
    quantity   integer NOT NULL,
    unit_price numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_no, line)
);
"""


def _server_named(dsn: str | None) -> bool:
    return (
        bool(dsn)
        or any(os.environ.get(v) for v in LIBPQ_ENV_VARS)
        or bool(os.environ.get("DATABASE_URL"))
    )


@contextmanager
def _database(dsn: str | None, keep: bool, log: Callable[[str], None]) -> Iterator[str | None]:
    """The DSN to use: the user's server, or an embedded throwaway one."""
    if _server_named(dsn):
        yield dsn
        return
    from pgaudit_tool.cluster import TempCluster, find_install

    install = find_install()
    log(f"no server named: starting an embedded PostgreSQL {install.major} ({install.source})")
    cluster = TempCluster(install).start()
    try:
        yield cluster.dsn
    finally:
        if keep:
            log(f"embedded server left running: {cluster.dsn} (data in {cluster.directory})")
        else:
            cluster.stop()


def run_demo(
    dsn: str | None, *, fmt: str, keep: bool, out: TextIO, log: Callable[[str], None]
) -> int:
    """Run the demo; returns the number of history records printed."""
    with _database(dsn, keep, log) as target, Audit.connect(target) as audit:
        conn = audit.conn
        if conn.execute("SELECT pg_catalog.to_regnamespace(%s)", (DEMO_SCHEMA,)).fetchone() != (
            None,
        ):
            raise InvalidInput(
                f"schema {DEMO_SCHEMA} already exists in this database",
                hint=f"Drop it (DROP SCHEMA {DEMO_SCHEMA} CASCADE) or run the demo elsewhere.",
            )
        try:
            return _scenario(audit, fmt, out, log)
        finally:
            if not keep:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(DEMO_SCHEMA))
                )


def _scenario(audit: Audit, fmt: str, out: TextIO, log: Callable[[str], None]) -> int:
    conn = audit.conn
    conn.execute(_SETUP)
    result = audit.install()
    log(f"audit schema at revision {result.after}")
    audit.enable("pgaudit_demo.customers", exclude=["password_hash"])
    audit.enable('pgaudit_demo."Order Items"')
    log('auditing pgaudit_demo.customers (password_hash excluded) and pgaudit_demo."Order Items"')

    with audit.actor("alice", {"ticket": "SHOP-101", "ip": "203.0.113.7"}):
        conn.execute(
            "INSERT INTO pgaudit_demo.customers (name, email, password_hash)"
            " VALUES ('Ada', 'ada@example.com', 'x1'), ('Grace', 'grace@example.com', 'x2')"
        )
        conn.execute(
            'INSERT INTO pgaudit_demo."Order Items" VALUES'
            " (1, 1, 1, 'keyboard', 1, 49.90), (1, 2, 1, 'mouse', 2, 19.50), (2, 1, 2, 'monitor', 1, 189.00)"
        )
    log("alice created 2 customers and 3 order lines")
    before_bob = audit.instant("now")
    with audit.actor("bob", {"ticket": "SHOP-102"}):
        conn.execute(
            'UPDATE pgaudit_demo."Order Items" SET quantity = 3 WHERE order_no = 1 AND line = 2'
        )
        conn.execute(
            "UPDATE pgaudit_demo.customers SET email = 'ada@example.org', password_hash = 'y1' WHERE id = 1"
        )
        conn.execute('DELETE FROM pgaudit_demo."Order Items" WHERE order_no = 2')
    log("bob changed a quantity and an e-mail address, and deleted an order")

    ada = audit.row_at("pgaudit_demo.customers", 1, before_bob)
    log(f"customer 1 as it was before bob's changes (row-at): {to_json_text(ada)}")
    lines = list(audit.table_at('pgaudit_demo."Order Items"', before_bob))
    log(f'pgaudit_demo."Order Items" before bob (table-at): {len(lines)} line(s)')
    head = audit.checkpoint()
    problems = audit.verify(head)
    log(f"hash chain sealed up to block {head['seq']}; verify: {problems or 'intact'}")
    log("history of pgaudit_demo:")
    records = (r for r in audit.history() if r["table"].startswith(f"{DEMO_SCHEMA}."))
    if fmt == "table":  # as `history` shows it to a person: each change in view
        return render((for_people(r) for r in records), fmt, out, PEOPLE_COLUMNS)
    return render(records, fmt, out, DEMO_COLUMNS)
