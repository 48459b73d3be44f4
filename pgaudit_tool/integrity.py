"""Tamper evidence and health: seal the log into a hash chain, verify it, check auditing.

See ``sql/functions/06_integrity.sql`` (sealing), ``pgaudit_tool/chain.py`` (verification in the
client), ``07_access.sql`` (doctor) and ``10_move.sql`` (reattach after a move).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row

from pgaudit_tool import chain, schema
from pgaudit_tool.db import changing_transaction, translated_errors, write_transaction
from pgaudit_tool.errors import InvalidInput
from pgaudit_tool.results import ChainProblem, Finding

CHECKPOINT_FORMAT = "pgaudit-tool checkpoint 1"
DOCTOR_COLUMNS = ("severity", "object", "problem", "fix")
VERIFY_COLUMNS = ("seq", "problem")
REATTACH_COLUMNS = ("table_name", "old_relid", "new_relid", "action")
_HASH = re.compile(r"[0-9a-f]{64}")


def checkpoint(conn: psycopg.Connection[Any], output: Path | None = None) -> dict[str, Any]:
    """Seal what finished since the last block and return the head of the chain, to keep outside.

    With ``output``, the head is written there (and flushed to disk) before the new block is
    committed: when the file cannot be written, nothing is sealed (InvalidInput).
    """
    if output is not None:
        _check_output(output)
    staged: Path | None = None
    try:
        with translated_errors(), changing_transaction(conn):
            head = _seal(conn)
            staged = None if output is None else _stage(output, head)
    except BaseException:
        if staged is not None:  # the commit failed: no block, so no head either
            staged.unlink(missing_ok=True)
        raise
    # Committed: the block and its head exist together; the head takes its final name.
    if staged is not None and output is not None:
        _publish(staged, output)
    return head


def _seal(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Seal a new block (in the caller's transaction) and return the head of the chain."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT s.seq, s.txid_to::text AS txid_to, pg_catalog.encode(s.hash, 'hex') AS hash, s.sealed_at,"
            " s.changes, s.transactions, s.journal, pg_catalog.current_database() AS database,"
            " (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database()) AS database_oid"
            " FROM audit.seal() AS s"
        ).fetchone()
    if row is None or row["seq"] is None:
        return {"format": CHECKPOINT_FORMAT, "seq": None, "note": "nothing to seal yet"}
    return {"format": CHECKPOINT_FORMAT, **row}


def _check_output(output: Path) -> None:
    """Refuse, before sealing, a checkpoint path that cannot be a regular file we write."""
    if output.exists() and not output.is_file():
        raise InvalidInput(
            f"cannot write the checkpoint to {output}: not a regular file; nothing was sealed"
        )
    if not output.parent.is_dir():
        why = "is not a directory" if output.parent.exists() else "does not exist"
        raise InvalidInput(
            f"cannot write the checkpoint to {output}: {output.parent} {why}; nothing was sealed"
        )


def _stage(output: Path, head: dict[str, Any]) -> Path:
    """Write the head next to ``output`` under a temporary name and flush it to disk."""
    from pgaudit_tool.output import to_json_text

    text = (to_json_text(head) + "\n").encode("utf-8")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    except OSError as exc:
        raise _unwritable(output, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        Path(name).unlink(missing_ok=True)
        raise _unwritable(output, exc) from exc
    return Path(name)


def _publish(staged: Path, output: Path) -> None:
    """Give the staged head its final name (atomic within the directory) and flush that."""
    try:
        os.replace(staged, output)
        dir_fd = os.open(output.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise InvalidInput(
            f"the block was sealed but its head could not be renamed to {output}:"
            f" {exc.strerror}; it is in {staged}"
        ) from exc


def _unwritable(output: Path, exc: OSError) -> InvalidInput:
    return InvalidInput(
        f"cannot write the checkpoint to {output}: {exc.strerror or exc}; nothing was sealed"
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file written by ``pgaudit-tool checkpoint``, checked (InvalidInput if bad)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not a checkpoint: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not a checkpoint: {exc.msg} (line {exc.lineno})") from exc
    parse_head(data, str(path))
    return dict(data)


def parse_head(data: Any, source: str = "the checkpoint") -> chain.Head:
    """Check a checkpoint's content (a dict as ``checkpoint()`` returns it); InvalidInput if bad."""
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInput(
            f'{source} is not a pgaudit-tool checkpoint (no "format": {CHECKPOINT_FORMAT!r})'
        )
    seq, digest, txid_to = data.get("seq"), data.get("hash"), data.get("txid_to")
    if seq is None:
        raise InvalidInput(f"{source} holds no sealed block to verify against")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise InvalidInput(f'{source}: "seq" must be a block number (an integer from 1)')
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise InvalidInput(f'{source}: "hash" must be 64 lowercase hexadecimal digits')
    if txid_to is not None and not (isinstance(txid_to, str) and txid_to.isdigit()):
        raise InvalidInput(f'{source}: "txid_to" must be a transaction id (digits)')
    database = data.get("database")
    if database is not None and not isinstance(database, str):
        raise InvalidInput(f'{source}: "database" must be a string')
    return chain.Head(seq, bytes.fromhex(digest), None if txid_to is None else int(txid_to))


def verify_report(
    conn: psycopg.Connection[Any],
    against: dict[str, Any] | None = None,
    archive: Path | None = None,
) -> chain.Report:
    """Recompute the chain in the client from the raw rows (no function of the audit schema is
    trusted), check the registry against its journal, and check a kept checkpoint; with
    ``archive``, recompute the dropped partitions' blocks from its files."""
    if archive is not None:
        from pgaudit_tool.archive import duckdb_module, read_manifest

        duckdb_module()
        read_manifest(archive)
    head = None if against is None else parse_head(against)
    problems: list[ChainProblem] = []
    if against is not None and against.get("database") not in (None, conn.info.dbname):
        problems.append(
            {
                "seq": None if head is None else head.seq,
                "problem": f"the checkpoint is of database {against['database']!r}",
            }
        )
    with translated_errors():
        report = chain.verify(conn, head, archive)
    report.problems[:0] = problems
    return report


def doctor(conn: psycopg.Connection[Any]) -> list[Finding]:
    """Every problem with auditing (see ``audit.doctor()``), and functions, views and triggers
    that are not this version's (which the database cannot know)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT severity, object, problem, fix FROM audit.doctor()").fetchall()
        found = cast("list[Finding]", rows)
        current, newer = schema.functions_standing(conn)
        if not current:
            found.insert(0, _functions_finding(newer))
    return found


def _functions_finding(newer: str | None) -> Finding:
    """The audit schema's functions are not this version's (``newer``: a newer version of the
    tool applied them)."""
    if newer is not None:
        problem = (
            f"its functions, views and triggers were applied by pgaudit_tool {newer}, newer"
            f" than this one ({schema.tool_version()}): use that version or a newer one"
        )
    else:
        problem = (
            "its functions, views and triggers are not those of this version of pgaudit_tool"
            " (an older version applied them, or they were changed by hand): fixes of this"
            " version are not in effect; run pgaudit-tool install (or install --repair)"
        )
    return {
        "severity": "warning",
        "object": f"schema {schema.SCHEMA}",
        "problem": problem,
        "fix": None,
    }


def apply_fixes(conn: psycopg.Connection[Any], fixes: list[str]) -> None:
    """Run doctor's fix statements, all in one transaction."""
    with translated_errors(), write_transaction(conn):
        for statement in fixes:
            conn.execute(statement)  # generated by audit.doctor() with format('%I'/'%L')


def reattach(conn: psycopg.Connection[Any], *, dry_run: bool = False) -> list[dict[str, Any]]:
    """After pg_restore into another database or cluster: file the registry, the log and
    capture under the tables' OIDs here, found by name (see ``audit.reattach()``), in one
    transaction. One record per registered table: moved, unchanged or missing."""
    with translated_errors(), write_transaction(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT table_name, old_relid, new_relid, action FROM audit.reattach(%s)", (dry_run,)
        ).fetchall()
