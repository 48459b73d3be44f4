"""One bench run: checks first, then the phases in the scratch schema, then the cleanup."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import sql

from pgaudit_tool import schema
from pgaudit_tool.bench.archive_reading import archive_reading_phase
from pgaudit_tool.bench.bulk import bulk_phase
from pgaudit_tool.bench.cleanup import cleanup
from pgaudit_tool.bench.config import (
    AUDITED,
    BARE_LOG,
    PLAIN,
    SCRATCH_PREFIX,
    BenchConfig,
    Progress,
    validate,
)
from pgaudit_tool.bench.reconstruction import reconstruction_phase
from pgaudit_tool.bench.report import build_report
from pgaudit_tool.bench.reporting import report_phase
from pgaudit_tool.bench.session import Session
from pgaudit_tool.bench.sql import BARE_LOG_DDL, TABLE_DDL
from pgaudit_tool.bench.throughput import single_row_phase, tpcb_phase
from pgaudit_tool.bench.watching import watch_phase
from pgaudit_tool.connection import connect, resolve_conninfo
from pgaudit_tool.db import translated_errors
from pgaudit_tool.errors import PermissionDenied


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


def run_bench(conninfo: str, config: BenchConfig, progress: Progress = _quiet) -> dict[str, Any]:
    """Measure the cost of auditing on the database of ``conninfo`` (see
    :mod:`pgaudit_tool.bench`).

    Raises NotInstalled without the audit schema, PermissionDenied when the role cannot delete
    from the audit tables (the bench could not clean up after itself), InvalidInput for a bad
    ``config``. ``progress`` receives one line per step (the CLI prints them on stderr).
    """
    validate(config)
    resolved = resolve_conninfo(conninfo)
    with connect(resolved) as conn:
        _preflight(conn)
    scratch = SCRATCH_PREFIX + secrets.token_hex(4)
    try:
        with connect(resolved) as conn:
            result = _measure(Session(conn, resolved, scratch, config, progress))
    except BaseException:
        cleanup(resolved, scratch, progress, quiet=True)
        raise
    cleanup(resolved, scratch, progress)
    return result


def _preflight(conn: psycopg.Connection[Any]) -> None:
    """The audit schema is installed and this role may clean up after the bench."""
    with translated_errors():
        schema.require_installed(conn)
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'DELETE') AND has_table_privilege(%s, 'DELETE')",
            (f"{schema.SCHEMA}.change", f"{schema.SCHEMA}.transaction"),
        ).fetchone()
    if not (row and row[0]):
        raise PermissionDenied(
            "bench deletes the audit rows it produces and needs DELETE on audit.change and "
            "audit.transaction",
            hint="Run it as the owner of the audit schema or as a superuser.",
        )


def _measure(s: Session) -> dict[str, Any]:
    """The phases, in order, and the result."""
    s.progress(f"bench: scratch schema {s.scratch}")
    _setup(s)
    bulk_phase(s)
    single_row_phase(s)
    tpcb_phase(s)
    reconstruction_phase(s)
    if s.config.watching:
        watch_phase(s)
    if s.config.reporting:
        report_phase(s)
    if s.config.archive_reading:
        archive_reading_phase(s)
    return build_report(s)


def _setup(s: Session) -> None:
    """The scratch schema, ``plain``, ``audited`` (captured) and ``bare_log``; whether this
    role may CHECKPOINT."""
    s.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(s.scratch)))
    for name in (PLAIN, AUDITED):
        s.conn.execute(sql.SQL(TABLE_DDL).format(s.table(name)))
    s.conn.execute(sql.SQL(BARE_LOG_DDL).format(s.table(BARE_LOG)))
    with translated_errors():
        s.set_audit(s.oid(AUDITED), on=True)
    try:
        s.conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        s.can_checkpoint = False
        s.notes.append(
            "CHECKPOINT not permitted for this role: checkpoints may fall inside measurements."
        )
