"""What the phases of one bench run share: the connection, the scratch schema, the samples."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool import schema
from pgaudit_tool.bench.config import AUDITED, BARE_LOG, FLOOR, PLAIN, BenchConfig, Progress
from pgaudit_tool.bench.pgbench import find_pgbench
from pgaudit_tool.bench.stats import Samples
from pgaudit_tool.errors import AuditError


class Session:
    """One bench run on an autocommit connection, inside the scratch schema."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        conninfo: str,
        scratch: str,
        config: BenchConfig,
        progress: Progress,
    ) -> None:
        self.conn = conn
        self.conninfo = conninfo
        self.scratch = scratch
        self.config = config
        self.progress = progress
        self.samples = Samples()
        self.notes: list[str] = []
        self.result: dict[str, Any] = {}
        self.can_checkpoint = True
        self.pgbench = find_pgbench(conn, config.pgbench) if config.use_pgbench else None

    def table(self, name: str, schema: str | None = None) -> sql.Identifier:
        """``name`` in ``schema``, by default the scratch schema."""
        return sql.Identifier(schema or self.scratch, name)

    def sample(self, name: str, value: float) -> None:
        """Record one measurement and report it."""
        self.samples.add(name, value)
        unit = "TPS" if name.endswith("_tps") else "ms"
        self.progress(f"  {name.rsplit('_', 1)[0]}: {value:.1f} {unit}")

    def oid(self, name: str, schema: str | None = None) -> int:
        """OID of the table ``name`` of ``schema``, by default the scratch schema."""
        schema = schema or self.scratch
        row = self.conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if row is None:
            raise AuditError(f"bench: table {schema}.{name} is missing")
        return int(row[0])

    def set_audit(self, oid: int, *, on: bool) -> None:
        if on:
            self.conn.execute("SELECT audit.enable(%s::oid::regclass)", (oid,))
        else:
            self.conn.execute("SELECT audit.disable(%s::oid::regclass)", (oid,))

    def checkpoint(self) -> None:
        if self.can_checkpoint:
            self.conn.execute("CHECKPOINT")

    def clear_bare_log(self) -> None:
        """Empty ``bare_log`` after a measurement that wrote into it."""
        self.conn.execute(sql.SQL("TRUNCATE {}").format(self.table(BARE_LOG)))

    def vacuum(self, table: sql.Identifier, analyze: bool = False) -> None:
        command = "VACUUM (ANALYZE) {}" if analyze else "VACUUM {}"
        self.conn.execute(sql.SQL(command).format(table))


def order(rep: int) -> tuple[str, str]:
    """Which table goes first: flips at every repetition so that neither always goes first."""
    return (PLAIN, AUDITED) if rep % 2 == 0 else (AUDITED, PLAIN)


def series(rep: int) -> tuple[str, str, str]:
    """The three series of a throughput phase: :func:`order`'s two, unaudited and audited
    swapping first and last place at each repetition, with the bare log's (:data:`FLOOR`) always
    between them."""
    first, last = order(rep)
    return first, FLOOR, last


def audit_tables() -> tuple[sql.Identifier, ...]:
    return (sql.Identifier(schema.SCHEMA, "change"), sql.Identifier(schema.SCHEMA, "transaction"))


def timed(conn: psycopg.Connection[Any], stmt: sql.Composed) -> float:
    """Milliseconds taken by one autocommit statement."""
    start = time.perf_counter()
    conn.execute(stmt)
    return (time.perf_counter() - start) * 1000.0
