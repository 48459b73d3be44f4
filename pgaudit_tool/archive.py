"""Archive old partitions of the log to Parquet, drop them, and read the archive back.

An archive is a directory: for each partition pair of the log (``audit.change_p<suffix>``,
``audit.transaction_p<suffix>``), ``change_p<suffix>.parquet`` and
``transaction_p<suffix>.parquet`` (zstd-compressed, columns in :data:`COLUMNS`), and
``manifest.json`` listing every file with its rows, bytes, sha256, time and transaction id
ranges and the hash-chain blocks it has rows of. Files are written by DuckDB (the optional
extra ``pgaudit-tool[archive]``, imported only here) from the server's COPY text output, fsynced,
read back and hashed before anything is dropped; the drop (``audit.retire()``) is one
transaction that records the files and their sha256 in ``audit.retired_partition``.

Only sealed partitions are archived: every row in them belongs to a block of the chain, so that
``verify --archive`` can recompute those blocks from the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgaudit_tool.db import conninfo_of, translated_errors, write_transaction
from pgaudit_tool.errors import AuditError, InvalidInput

FORMAT = "pgaudit-tool archive 1"
MANIFEST = "manifest.json"
ARCHIVE_COLUMNS = (
    "suffix",
    "lower",
    "upper",
    "transactions",
    "changes",
    "bytes",
    "status",
)

#: The columns of the archive's files, in order: name, DuckDB/Parquet type. Times are UTC
#: timestamps (microseconds), JSON is PostgreSQL's jsonb text, inet its text form. Stable
#: across versions: a later format adds columns at the end and says so in ``format``.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "transaction": (
        ("txid", "BIGINT"),
        ("started_at", "TIMESTAMPTZ"),
        ("db_user", "VARCHAR"),
        ("application_name", "VARCHAR"),
        ("client_addr", "VARCHAR"),
        ("client_port", "INTEGER"),
        ("backend_pid", "INTEGER"),
        ("actor", "VARCHAR"),
        ("context", "VARCHAR"),
        ("committed_at", "TIMESTAMPTZ"),
    ),
    "change": (
        ("id", "BIGINT"),
        ("txid", "BIGINT"),
        ("relid", "BIGINT"),
        ("schema_name", "VARCHAR"),
        ("table_name", "VARCHAR"),
        ("op", "VARCHAR"),
        ("role", "VARCHAR"),
        ("statement_at", "TIMESTAMPTZ"),
        ("clock_at", "TIMESTAMPTZ"),
        ("pk", "VARCHAR"),
        ("old", "VARCHAR"),
        ("new", "VARCHAR"),
        ("started_at", "TIMESTAMPTZ"),
    ),
}
#: The order of the rows in a file: transactions by id, changes by table, key and id, so that
#: the row groups' statistics let a reader skip all but a few for a table or a row.
ORDER = {"transaction": ("txid",), "change": ("relid", "pk", "id")}
#: The order of the rows in the hash chain's blocks (docs/chain.md).
BLOCK_ORDER = {"transaction": ("txid",), "change": ("txid", "id")}
# Text settings of the export (those of the hash chain: timestamps in UTC, ISO).
_SETTINGS = (("timezone", "UTC"), ("datestyle", "ISO, YMD"), ("extra_float_digits", "1"))


def duckdb_module() -> Any:
    """DuckDB, imported on first use; InvalidInput naming the extra when it is missing."""
    try:
        import duckdb
    except ImportError:
        raise InvalidInput(
            "archives need DuckDB, which is not installed",
            hint="pip install 'pgaudit-tool[archive]'",
        ) from None
    return duckdb


#: DuckDB's memory for one archive operation (sorting a partition, reading history); beyond it
#: DuckDB spills to a temporary directory of its own, removed afterwards.
DUCKDB_MEMORY = "1GB"


@contextmanager
def duckdb_session() -> Iterator[Any]:
    """A DuckDB connection (an in-memory database) whose memory is bounded by
    :data:`DUCKDB_MEMORY`, spilling to a private temporary directory; closed and removed after."""
    duckdb = duckdb_module()
    with tempfile.TemporaryDirectory(prefix="pgaudit-duckdb-") as spill:
        con = duckdb.connect()
        try:
            con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
            con.execute(f"SET temp_directory = {duck_literal(spill)}")
            yield con
        finally:
            con.close()


@dataclass
class Part:
    """One partition pair to archive, as ``audit.archivable()`` describes it."""

    suffix: str
    lower: datetime
    upper: datetime
    transactions: int
    changes: int
    txid_min: int | None
    txid_max: int | None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    status: str = "planned"
    label: str = ""  # the suffix, made unique in the archive when a range was dropped before

    def file_name(self, log: str) -> str:
        return f"{log}_p{self.label or self.suffix}.parquet"

    def record(self) -> dict[str, Any]:
        """The manifest's entry for this pair."""
        return {
            "label": self.label or self.suffix,
            "suffix": self.suffix,
            "lower": self.lower.isoformat(),
            "upper": self.upper.isoformat(),
            "transactions": self.transactions,
            "changes": self.changes,
            "txid_min": self.txid_min,
            "txid_max": self.txid_max,
            "files": self.files,
            "blocks": self.blocks,
        }

    def row(self) -> dict[str, Any]:
        """A line of the command's output."""
        return {
            "suffix": self.suffix,
            "lower": self.lower,
            "upper": self.upper,
            "transactions": self.transactions,
            "changes": self.changes,
            "bytes": sum(int(f.get("bytes", 0)) for f in self.files.values()) or None,
            "status": self.status,
        }


@dataclass
class Plan:
    """What ``archive --before T`` would do: the sealed pairs before T, and why it stops there."""

    parts: list[Part]
    stopped: str | None


def plan(conn: psycopg.Connection[Any], before: datetime, *, holds_stop: bool = False) -> Plan:
    """The partition pairs entirely before ``before`` whose rows are all sealed, oldest first;
    ``stopped`` says why a later pair before ``before`` is left out (rows not sealed, or, with
    ``holds_stop``, a legal hold)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT suffix, lower, upper, transactions, changes, txid_min::text AS txid_min,"
            " txid_max::text AS txid_max, unsealed, held_by FROM audit.archivable(%s)",
            (before,),
        ).fetchall()
    parts: list[Part] = []
    for r in rows:
        if holds_stop and r["held_by"]:
            return Plan(
                parts,
                f"partition audit.change_p{r['suffix']} (from {r['lower']}) and the later ones"
                f" are kept: {r['held_by']}",
            )
        if r["unsealed"]:
            return Plan(
                parts,
                f"partition audit.change_p{r['suffix']} (from {r['lower']}) and the later ones"
                f" are left out: {r['unsealed']} of their rows are not sealed yet; seal them"
                " with 'pgaudit-tool maintain' (a transaction still running keeps the rows"
                " after it unsealed)",
            )
        parts.append(
            Part(
                r["suffix"],
                r["lower"],
                r["upper"],
                int(r["transactions"]),
                int(r["changes"]),
                None if r["txid_min"] is None else int(r["txid_min"]),
                None if r["txid_max"] is None else int(r["txid_max"]),
            )
        )
    return Plan(parts, None)


def write(
    conn: psycopg.Connection[Any],
    parts: Sequence[Part],
    directory: Path,
    progress: Callable[[str], None] | None = None,
) -> list[Part]:
    """Write each pair's files (kept when the manifest already lists them intact), read them
    back, and update the manifest after each pair. Raises AuditError naming the files written
    so far when something fails; the database is not changed."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory, create=True)
    identity = database_identity(conn)
    _check_identity(manifest, identity, directory)
    manifest["database"] = identity
    entries = {e.get("label", e["suffix"]): e for e in manifest["partitions"]}
    written: list[str] = []
    try:
        for part in parts:
            part.label = _label(part.suffix, entries)
            kept = entries.get(part.label)
            if kept is not None and _intact(directory, kept, part):
                part.files, part.status = kept["files"], "kept"
            else:
                for log in ("transaction", "change"):
                    if progress is not None:
                        progress(f"writing {part.file_name(log)}")
                    part.files[log] = _export(conn, part, log, directory, identity)
                    written.append(part.file_name(log))
                part.status = "written"
            part.blocks = _blocks(conn, part)
            entries[part.label] = part.record()
            manifest["partitions"] = sorted(entries.values(), key=lambda e: e["lower"])
            _write_manifest(directory, manifest)
    except Exception as exc:
        if not isinstance(exc, AuditError | psycopg.Error | OSError | duckdb_module().Error):
            raise
        files = ", ".join(written) or "none"
        raise AuditError(
            f"the archive failed ({exc}); the database was not changed; files written in"
            f" {directory} by this run: {files}",
            hint="Run the same command again to resume (intact files are kept), or remove"
            " those files.",
        ) from exc
    return list(parts)


def drop_parts(conn: psycopg.Connection[Any], parts: Sequence[Part], directory: Path) -> list[Part]:
    """Drop the archived pairs in one transaction (``audit.retire()``), after checking once
    more that their files are on disk as written."""
    for part in parts:
        for meta in part.files.values():
            path = directory / meta["file"]
            if not path.is_file() or sha256_of(path) != meta["sha256"]:
                raise AuditError(
                    f"{path} is not the file just written (missing or changed); nothing was"
                    " dropped",
                    hint="Run the archive again.",
                )
    payload = retire_payload(parts, directory)
    with translated_errors(), write_transaction(conn):
        conn.execute("SELECT * FROM audit.retire(%s::jsonb, 'archive')", (payload,))
    for part in parts:
        part.status = "dropped"
    return list(parts)


def retire_payload(parts: Sequence[Part], directory: Path | None) -> str:
    """The argument of ``audit.retire()`` for these pairs (counts the archive holds, files)."""
    return json.dumps(
        [
            {
                "suffix": p.suffix,
                "transactions": p.transactions,
                "changes": p.changes,
                **(
                    {"files": {**p.files, "archive": str(directory)}}
                    if directory is not None
                    else {}
                ),
            }
            for p in parts
        ]
    )


@dataclass
class Result:
    """What ``archive`` did (or, with ``dry_run``, would do): one :class:`Part` per pair, why
    later pairs were left out, and the SQL of the drop."""

    parts: list[Part]
    stopped: str | None
    drop_sql: str | None


def run(
    conn: psycopg.Connection[Any],
    before: datetime,
    directory: Path,
    *,
    drop: bool = False,
    dry_run: bool = False,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Archive the sealed partition pairs before ``before`` into ``directory``, then (``drop``)
    drop them in one transaction. ``confirm(plan)`` is asked before anything is written when
    dropping; False stops with nothing done. ``dry_run``: plan only."""
    duckdb_module()
    found = plan(conn, before)
    statement = None
    if drop and found.parts:
        statement = (
            sql.SQL("SELECT * FROM audit.retire({}::jsonb, 'archive');")
            .format(sql.Literal(retire_payload(found.parts, directory)))
            .as_string(conn)
        )
    if dry_run or not found.parts:
        return Result(found.parts, found.stopped, statement)
    if drop and confirm is not None and not confirm(found):
        return Result([], found.stopped, statement)
    parts = write(conn, found.parts, directory, progress)
    if drop:
        try:
            dropped = drop_parts(conn, parts, directory)
        except AuditError as exc:
            kept = f"The files written stay in {directory}: a re-run uses them."
            exc.hint = f"{exc.hint} {kept}" if exc.hint else kept
            raise
        _record_drop(directory, dropped)
    return Result(parts, found.stopped, statement)


def retention(
    conn: psycopg.Connection[Any],
    keep: str,
    directory: Path | None,
    *,
    dry_run: bool = False,
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Keep ``keep`` (an interval: "90 days", "7 years") of history in the log: seal, then
    archive to ``directory`` and drop the pairs that ended before now minus ``keep`` (None:
    drop them without an archive, recorded in audit.retired_partition), oldest first, stopping
    at the first held or unsealed one; seal again, so that the record of the drop is in the
    chain at once."""
    with translated_errors(), conn.cursor() as cur:
        row = cur.execute(
            "SELECT now() - %s::interval, %s::interval > interval '0'", (keep, keep)
        ).fetchone()
    assert row is not None
    before, positive = row
    if not positive:
        raise InvalidInput(f"--keep {keep!r} is not a positive interval", hint="e.g. --keep 90d")
    if not dry_run:
        _maintain(conn)
    found = plan(conn, before, holds_stop=True)
    statement = (
        sql.SQL("SELECT * FROM audit.retire({}::jsonb, {});")
        .format(
            sql.Literal(retire_payload(found.parts, directory)),
            sql.Literal("archive" if directory is not None else "retention"),
        )
        .as_string(conn)
        if found.parts
        else None
    )
    if dry_run or not found.parts:
        return Result(found.parts, found.stopped, statement)
    if confirm is not None and not confirm(found):
        return Result([], found.stopped, statement)
    if directory is not None:
        parts = write(conn, found.parts, directory, progress)
        _record_drop(directory, drop_parts(conn, parts, directory))
    else:
        parts = found.parts
        with translated_errors(), write_transaction(conn):
            conn.execute(
                "SELECT * FROM audit.retire(%s::jsonb, 'retention')",
                (retire_payload(parts, None),),
            )
        for part in parts:
            part.status = "dropped"
    _maintain(conn)
    return Result(parts, found.stopped, statement)


def _maintain(conn: psycopg.Connection[Any]) -> None:
    with translated_errors(), write_transaction(conn):
        conn.execute("SELECT * FROM audit.maintain()")


def _record_drop(directory: Path, parts: Sequence[Part]) -> None:
    """Mark the dropped pairs in the manifest (the database's record is audit.retired_partition)."""
    manifest = read_manifest(directory)
    dropped = {p.label or p.suffix for p in parts}
    for entry in manifest["partitions"]:
        if entry.get("label", entry["suffix"]) in dropped:
            entry["dropped"] = True
    _write_manifest(directory, manifest)


# -- files ---------------------------------------------------------------------------------


def _export(
    conn: psycopg.Connection[Any], part: Part, log: str, directory: Path, identity: dict[str, Any]
) -> dict[str, Any]:
    """One partition to its Parquet file, checked against the partition's row count."""
    final = directory / part.file_name(log)
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in COLUMNS[log]),
        sql.Identifier("audit", f"{log}_p{part.suffix}"),
    )
    metadata = {
        "pgaudit_format": FORMAT,
        "pgaudit_database": json.dumps(identity, sort_keys=True),
        "pgaudit_partition": f"audit.{log}_p{part.suffix}",
    }
    expected = part.changes if log == "change" else part.transactions
    rows = write_parquet(conn, query, log, final, metadata, streams=render_streams(log, expected))
    if rows != expected:
        raise AuditError(f"{final} holds {rows} rows, the partition {expected}")
    return {
        "file": final.name,
        "rows": rows,
        "bytes": final.stat().st_size,
        "sha256": sha256_of(final),
    }


def write_parquet(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    log: str,
    final: Path,
    metadata: dict[str, str] | None = None,
    *,
    streams: int = 1,
) -> int:
    """Rows of ``query`` (the columns of ``COLUMNS[log]``, in order) to a Parquet file: the
    server's COPY text to scratch files (:func:`_render_text`, up to ``streams`` sessions at
    once), DuckDB from them to Parquet (:func:`_read_copy_text`), sorted in ``ORDER[log]``,
    under a temporary name, fsynced, counted back, renamed. Returns the rows written."""
    duckdb_module()  # without DuckDB, fail before the export
    scratches = [final.with_name(f".{final.name}.{k}.copy") for k in range(streams)]
    staging = final.with_name(f".{final.name}.tmp")
    try:
        written = _render_text(conn, query, log, scratches)
        with duckdb_session() as con:
            kv = ", ".join(f"{k}: {duck_literal(v)}" for k, v in (metadata or {}).items())
            # COPY takes no parameters: the paths and metadata, ours, are quoted literals.
            con.execute(
                f"COPY (SELECT * FROM ({_read_copy_text(written, log)})"  # noqa: S608
                f" ORDER BY {', '.join(ORDER[log])})"
                f" TO {duck_literal(str(staging))} (FORMAT parquet, COMPRESSION zstd"
                + (f", KV_METADATA {{{kv}}})" if kv else ")")
            )
            rows = int(
                con.execute("SELECT count(*) FROM read_parquet(?)", [str(staging)]).fetchone()[0]
            )
        _fsync(staging)
        os.replace(staging, final)
        _fsync_dir(final.parent)
    finally:
        for scratch in scratches:
            scratch.unlink(missing_ok=True)
        staging.unlink(missing_ok=True)
    return rows


def _read_copy_text(paths: Sequence[Path], log: str) -> str:
    """A DuckDB query of the rows in ``paths``, PostgreSQL's COPY text format of the columns
    of ``COLUMNS[log]`` (tab-separated, NULL as ``\\N``, backslash escapes; cheaper for the
    server to write and for DuckDB to read than CSV, which doubles every quote of the JSON).
    DuckDB reads the fields verbatim; a text field holding a backslash is decoded: split at
    each escaped backslash, the other escapes (a backslash and ``b f n r t v``, all that COPY
    writes) replaced in each piece, joined with backslashes."""
    spec = ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS[log])
    files = ", ".join(duck_literal(str(p)) for p in paths)
    escapes = (("\\b", 8), ("\\f", 12), ("\\n", 10), ("\\r", 13), ("\\t", 9), ("\\v", 11))

    def decoded(column: str) -> str:
        piece = "p"
        for escape, code in escapes:
            piece = f"replace({piece}, '{escape}', chr({code}))"
        name = f'"{column}"'
        return (
            f"CASE WHEN contains({name}, '\\') THEN array_to_string(list_transform("
            f"string_split({name}, '\\\\'), lambda p: {piece}), '\\') ELSE {name} END AS {name}"
        )

    columns = ", ".join(decoded(c) if t == "VARCHAR" else f'"{c}"' for c, t in COLUMNS[log])
    return (
        f"SELECT {columns} FROM read_csv([{files}], header = false, auto_detect = false,"  # noqa: S608
        f" delim = chr(9), quote = '', escape = '', nullstr = '\\N', columns = {{{spec}}})"
    )


#: Sessions rendering the COPY text of a large partition of changes at once, and the rows
#: from which more than one does (each opens a connection; a file of transactions is small).
RENDER_STREAMS = 2
PARALLEL_ROWS = 50_000


def render_streams(log: str, rows: int) -> int:
    """Sessions rendering the COPY text of ``rows`` rows of ``log`` (:func:`_render_text`)."""
    return RENDER_STREAMS if log == "change" and rows >= PARALLEL_ROWS else 1


def _render_text(
    conn: psycopg.Connection[Any], query: sql.Composable, log: str, paths: Sequence[Path]
) -> list[Path]:
    """The server's COPY text of ``query``'s rows (the log's text settings) into the first of
    ``paths`` from ``conn``; or, given more, one share of the rows in each (by the first
    column, an id), rendered at once by sessions of their own on one snapshot, as ``conn``'s
    role (rendering JSON and times is the server's work, one core a session: two take 0.85
    of the time on two cores). When those sessions cannot be opened (a connection limit),
    ``conn`` renders all. Returns the files written."""
    with conn.transaction():
        helpers = _share_sessions(conn, len(paths)) if len(paths) > 1 else []
        if not helpers:
            with paths[0].open("wb") as out:
                _copy_text(conn, query, out)
            return [paths[0]]
        key = sql.Identifier(COLUMNS[log][0][0])
        shares = [
            sql.SQL(
                "SELECT * FROM ({}) AS q"
                " WHERE q.{} OPERATOR(pg_catalog.%) {}::bigint OPERATOR(pg_catalog.=) {}::bigint"
            ).format(query, key, sql.Literal(len(helpers)), sql.Literal(k))
            for k in range(len(helpers))
        ]
        try:
            with ThreadPoolExecutor(len(helpers)) as pool:
                futures = [
                    pool.submit(_copy_share, helper, share, path)
                    for helper, share, path in zip(helpers, shares, paths, strict=False)
                ]
                for future in futures:
                    future.result()
        finally:
            for helper in helpers:
                helper.close()
    return list(paths[: len(helpers)])


def _share_sessions(conn: psycopg.Connection[Any], n: int) -> list[psycopg.Connection[Any]]:
    """``n`` new sessions as ``conn``'s user and role, each in a read-only transaction on one
    snapshot (the first exports it, the others import it), ``search_path`` pinned; none when
    one of them cannot be opened (a connection limit, a server that cannot export snapshots)."""
    row = conn.execute("SELECT current_user <> session_user, current_user").fetchone()
    assert row is not None
    other_role, role = row
    conninfo = conninfo_of(conn)
    helpers: list[psycopg.Connection[Any]] = []
    snapshot = None
    try:
        for _ in range(n):
            helper = psycopg.connect(conninfo, autocommit=True)
            helpers.append(helper)
            helper.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # Not the role's default path: no operator of a schema on it stands in for ours.
            helper.execute("SET LOCAL search_path = pg_catalog, pg_temp")
            if snapshot is None:
                exported = helper.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
                snapshot = exported[0] if exported else None
            else:
                helper.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            if other_role:
                helper.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    except psycopg.Error:
        for helper in helpers:
            helper.close()
        return []
    return helpers


def _copy_share(helper: psycopg.Connection[Any], query: sql.Composable, path: Path) -> None:
    with path.open("wb") as out:
        _copy_text(helper, query, out)


def _copy_text(conn: psycopg.Connection[Any], query: sql.Composable, out: BinaryIO) -> None:
    """``query``'s rows as the server's COPY text into ``out``, with the log's text settings
    for the rest of ``conn``'s transaction."""
    for name, value in _SETTINGS:
        conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        for chunk in copy:
            out.write(chunk)


def _label(suffix: str, entries: dict[str, dict[str, Any]]) -> str:
    """The suffix, or, when the archive holds a dropped pair of that range already (rows of a
    long transaction got a partition there again), the suffix with the next free number."""
    label, n = suffix, 1
    while label in entries and entries[label].get("dropped"):
        n += 1
        label = f"{suffix}_{n}"
    return label


def duck_literal(text: str) -> str:
    """A DuckDB string literal (paths and metadata we write ourselves)."""
    return "'" + text.replace("'", "''") + "'"


def _intact(directory: Path, entry: dict[str, Any], part: Part) -> bool:
    """Whether the manifest's files for this pair exist as listed and hold its row counts."""
    files = entry.get("files") or {}
    counts = {"transaction": part.transactions, "change": part.changes}
    for log, rows in counts.items():
        meta = files.get(log)
        if not meta or meta.get("rows") != rows:
            return False
        path = directory / str(meta.get("file"))
        if not path.is_file() or sha256_of(path) != meta.get("sha256"):
            return False
    return True


def sha256_of(path: Path) -> str:
    """The file's SHA-256, lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the manifest --------------------------------------------------------------------------


def read_manifest(directory: Path, *, create: bool = False) -> dict[str, Any]:
    """The archive's manifest; an empty one when ``create`` and there is none yet."""
    path = directory / MANIFEST
    if not path.exists():
        if create:
            return {"format": FORMAT, "database": None, "partitions": []}
        raise InvalidInput(f"{directory} is not an archive of pgaudit_tool: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a manifest of format {FORMAT!r}")
    return manifest


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    staging = directory / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    _fsync(staging)
    os.replace(staging, directory / MANIFEST)
    _fsync_dir(directory)


def database_identity(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Where the log comes from (``audit.home``): cluster system identifier, database OID, name."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT system_identifier::text AS system_identifier, database_oid::bigint AS"
            " database_oid, database_name FROM audit.home"
        ).fetchone()
    return dict(row) if row else {}


def _check_identity(manifest: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    known = manifest.get("database")
    if known and known != identity:
        raise InvalidInput(
            f"{directory} is the archive of another database ({known}), not of this one"
            f" ({identity})",
            hint="Archive each database into a directory of its own.",
        )


def _blocks(conn: psycopg.Connection[Any], part: Part) -> list[dict[str, Any]]:
    """The chain blocks holding rows of this pair, with their hashes."""
    if part.txid_min is None or part.txid_max is None:
        return []
    rows = conn.execute(
        "SELECT s.seq, pg_catalog.encode(s.hash, 'hex') FROM audit.seal AS s"
        " WHERE s.txid_to > %s::text::xid8 AND s.txid_from <= %s::text::xid8 ORDER BY s.seq",
        (str(part.txid_min), str(part.txid_max)),
    ).fetchall()
    return [{"seq": int(r[0]), "hash": r[1]} for r in rows]


# -- reading the archive with the live log (history --archive) -----------------------------

ARCHIVED = {"change": "pgaudit_archived_change", "transaction": "pgaudit_archived_transaction"}
HISTORY_VIEW = "pgaudit_history"


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
#: Trailing zeros of a JSON number's fraction (and a fraction of zeros), JSON strings left as
#: they are; the same in Python and DuckDB (RE2): replaced by the groups it keeps.
_NUMBER_ZEROS = rf"({_JSON_STRING})|(\.[0-9]*[1-9])0+([^0-9]|$)|\.0+([^0-9]|$)"
_FIRST_NUMBER = re.compile(rf"{_JSON_STRING}|(-?[0-9]+(?:\.[0-9]+)?)")


def canonical_numbers(text: str) -> str:
    """JSON text with every number spelled without trailing fractional zeros (1.50 -> 1.5,
    3.0 -> 3), as DuckDB spells it in :meth:`KeyTexts.condition`."""
    return re.sub(_NUMBER_ZEROS, lambda m: "".join(g or "" for g in m.groups()), text)


#: At most this many rows' keys are looked for by key in the archive's files (blame of a
#: part of a key); beyond, every archived change of the table is read.
KEYS_NAMED = 1000


@dataclass(frozen=True)
class KeyTexts:
    """A key to find in the archive, which holds keys as the server's jsonb text: its variants
    (under today's column names and past layouts', ``audit._pk_variants``) as jsonb text, and
    whether it can hold numeric values (``audit._key_holds_numeric``)."""

    texts: list[str]
    numeric: bool = False

    def condition(self, column: str) -> tuple[str, list[Any]]:
        """A DuckDB condition on ``column`` (archived keys) that is true for the keys jsonb
        finds equal to a variant, and its parameters. jsonb compares numbers by value: a
        numeric key has spellings text tells apart (1.5, 1.50). Without numeric values, the
        texts are compared (the files' order lets row-group statistics skip all but a few
        groups); with them, the keys are compared with their numbers' trailing zeros dropped,
        within the range of texts that begin like the variant up to its first number."""
        if not self.numeric:
            return f"{column} IN ({', '.join('?' for _ in self.texts) or 'NULL'})", list(self.texts)
        parts: list[str] = []
        params: list[Any] = []
        canonical = f"regexp_replace({column}, {duck_literal(_NUMBER_ZEROS)}, '\\1\\2\\3\\4', 'g')"
        for text in self.texts:
            spelled = canonical_numbers(text)
            first = next((m for m in _FIRST_NUMBER.finditer(spelled) if m.group(1)), None)
            if first is None:
                parts.append(f"{column} = ?")
                params.append(text)
                continue
            lower = spelled[: first.end()]
            upper = lower[:-1] + chr(ord(lower[-1]) + 1)
            parts.append(f"({column} >= ? AND {column} < ? AND {canonical} = ?)")
            params += [lower, upper, spelled]
        return f"({' OR '.join(parts) or 'false'})", params


@dataclass(frozen=True)
class Selection:
    """What a reading needs of the archive: the archived rows matching these (None: any)."""

    relid: int | None = None
    key: KeyTexts | None = None  # whole keys (one row's, or several rows')
    txid: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    db_user: str | None = None
    committed_after: datetime | None = None  # changes of transactions committed later (or not)


def attach(conn: psycopg.Connection[Any], directory: Path, selection: Selection) -> sql.Composable:
    """Load the archived rows of the dropped partitions that ``selection`` may need into
    temporary tables, and return a temporary view shaped as ``audit.history`` over them and
    the live log (read it in this session). Only partitions the database recorded as dropped
    are read, from the files it recorded (a missing file is an error)."""
    pairs = archived_pairs(conn, directory)
    duckdb = duckdb_module()
    with translated_errors():
        for log, name in ARCHIVED.items():
            conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {})").format(
                    sql.Identifier(name), sql.Identifier("audit", log)
                )
            )
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier("pg_temp", name)))
    with duckdb_session() as con:
        for paths in pairs:
            try:
                _load_partition(conn, con, paths, selection)
            except duckdb.Error as exc:
                raise InvalidInput(
                    f"cannot read the archive file {paths['change'].name} or"
                    f" {paths['transaction'].name} in {directory}: {str(exc).splitlines()[0]}",
                    hint="pgaudit-tool verify --archive DIR checks the files.",
                ) from None
    with translated_errors():
        # Estimates for the join with the live log (a temporary table has none until then).
        conn.execute(
            sql.SQL("ANALYZE {}, {}").format(
                *(sql.Identifier("pg_temp", name) for name in ARCHIVED.values())
            )
        )
    with translated_errors():
        row = conn.execute(
            "SELECT audit._history_sql(%s, %s)",
            tuple(
                sql.SQL("(SELECT * FROM {} UNION ALL SELECT * FROM {})")
                .format(sql.Identifier("audit", log), sql.Identifier("pg_temp", name))
                .as_string(conn)
                for log, name in ARCHIVED.items()
            ),
        ).fetchone()
        assert row is not None
        conn.execute(
            sql.SQL("CREATE OR REPLACE TEMP VIEW {} AS {}").format(
                sql.Identifier(HISTORY_VIEW), sql.SQL(row[0])
            )
        )
    return sql.Identifier("pg_temp", HISTORY_VIEW)


def archived_pairs(conn: psycopg.Connection[Any], directory: Path) -> list[dict[str, Path]]:
    """The files (``change``, ``transaction``) of each partition pair the database recorded as
    dropped to ``directory``, oldest first, after checking that the archive is this database's
    and that every file is there (InvalidInput naming the first missing one)."""
    manifest = read_manifest(directory)
    _check_identity(manifest, database_identity(conn), directory)
    with translated_errors():
        files = conn.execute(
            "SELECT files FROM audit.retired_partition WHERE files IS NOT NULL ORDER BY id"
        ).fetchall()
    pairs = []
    for (recorded,) in files:
        paths = {log: directory / str(recorded[log]["file"]) for log in ARCHIVED}
        for path in paths.values():
            if not path.is_file():
                raise InvalidInput(
                    f"{path} is missing from the archive: the log recorded it as the file"
                    " of a dropped partition"
                )
        pairs.append(paths)
    return pairs


def _load_partition(
    conn: psycopg.Connection[Any], con: Any, paths: dict[str, Path], sel: Selection
) -> None:
    """Copy the rows of one archived partition pair that ``sel`` may need: its matching changes
    and their transactions. A filter on transactions (actor, login role, commit time) is applied
    to the small transaction file first; a partition without a match is not read further."""
    tx_where, tx_params = _transaction_filter(sel)
    where, params = _change_filter(sel)
    if tx_where:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE matched AS SELECT * FROM read_parquet(?)"  # noqa: S608
            f" WHERE {' AND '.join(tx_where)}",
            [str(paths["transaction"]), *tx_params],
        )
        if not con.execute("SELECT EXISTS (SELECT 1 FROM matched)").fetchone()[0]:
            return
        where.append("txid IN (SELECT txid FROM matched)")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE picked AS SELECT * FROM read_parquet(?)"  # noqa: S608
        f" WHERE {' AND '.join(where)}",
        [str(paths["change"]), *params],
    )
    if not con.execute("SELECT EXISTS (SELECT 1 FROM picked)").fetchone()[0]:
        return
    _copy_picked(conn, con, "change")
    source = "matched" if tx_where else "read_parquet(?)"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE picked AS SELECT * FROM {source}"  # noqa: S608
        " WHERE txid IN (SELECT txid FROM picked)",
        [] if tx_where else [str(paths["transaction"])],
    )
    _copy_picked(conn, con, "transaction")


def _change_filter(sel: Selection) -> tuple[list[str], list[Any]]:
    """DuckDB conditions on an archived change file for ``sel``, and their parameters."""
    where: list[str] = ["true"]
    params: list[Any] = []
    for condition, value in (
        ("relid = ?", sel.relid),
        ("txid = ?", sel.txid),
        ("clock_at >= ?", sel.since),
        ("clock_at < ?", sel.until),
    ):
        if value is not None:
            where.append(condition)
            params.append(value)
    if sel.key is not None:
        # With the table's TRUNCATEs recorded without rows (no key), which reconstruction
        # looks for to refuse instants before them.
        condition, values = sel.key.condition("pk")
        where.append(f"(pk IS NULL OR {condition})")
        params.extend(values)
    return where, params


def _transaction_filter(sel: Selection) -> tuple[list[str], list[Any]]:
    """DuckDB conditions on an archived transaction file for ``sel`` (none: no filter)."""
    where: list[str] = []
    params: list[Any] = []
    for condition, value in (("actor = ?", sel.actor), ("db_user = ?", sel.db_user)):
        if value is not None:
            where.append(condition)
            params.append(value)
    if sel.committed_after is not None:
        where.append("(committed_at > ? OR committed_at IS NULL)")
        params.append(sel.committed_after)
    return where, params


def _copy_picked(conn: psycopg.Connection[Any], con: Any, log: str) -> None:
    """DuckDB's table ``picked`` into this session's temporary table of ``log``, as CSV (times
    in UTC), without a row passing through Python."""
    names = [c for c, _ in COLUMNS[log]]
    with tempfile.NamedTemporaryFile(suffix=".csv") as scratch:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"COPY (SELECT {', '.join(names)} FROM picked)"  # noqa: S608
            f" TO {duck_literal(scratch.name)} (FORMAT csv, HEADER false)"
        )
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier("pg_temp", ARCHIVED[log]), sql.SQL(", ").join(map(sql.Identifier, names))
        )
        with (
            translated_errors(),
            conn.cursor().copy(statement) as copy,
            open(scratch.name, "rb") as f,
        ):
            while chunk := f.read(1 << 20):
                copy.write(chunk)


# -- reading the archive back (verify --archive) -------------------------------------------


def archived_digest_rows(path: Path, log: str) -> Iterator[tuple[int, int, list[bytes | None]]]:
    """The rows of an archive file in block order, as (txid, id, the columns' PostgreSQL text
    forms under the chain's settings), for hashing (docs/chain.md)."""
    names = [c for c, _ in COLUMNS[log]]
    hashed = names[:-1] if log == "change" else names  # started_at is not hashed
    types = dict(COLUMNS[log])
    select = ", ".join(f"epoch_us({c})" if types[c] == "TIMESTAMPTZ" else c for c in hashed)
    with duckdb_session() as con:
        cur = con.execute(
            f"SELECT {select} FROM read_parquet(?) ORDER BY {', '.join(BLOCK_ORDER[log])}",  # noqa: S608
            [str(path)],
        )
        while batch := cur.fetchmany(5000):
            for values in batch:
                text = [_pg_text(v, types[c]) for v, c in zip(values, hashed, strict=True)]
                txid = int(values[hashed.index("txid")])
                row_id = int(values[0]) if log == "change" else 0
                yield txid, row_id, text


def _pg_text(value: Any, kind: str) -> bytes | None:
    """PostgreSQL's text output of an archived value (``TimeZone = UTC``, ISO)."""
    if value is None:
        return None
    if kind == "TIMESTAMPTZ":
        return pg_timestamptz(int(value)).encode()
    return str(value).encode("utf-8")


def pg_timestamptz(epoch_us: int) -> str:
    """timestamptz_out in UTC with DateStyle ISO: fraction without trailing zeros, '+00'."""
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)
    text = at.strftime("%Y-%m-%d %H:%M:%S")
    if at.microsecond:
        text += f".{at.microsecond:06d}".rstrip("0")
    return text + "+00"


# -- legal holds ---------------------------------------------------------------------------

HOLD_COLUMNS = ("id", "table_name", "until", "reason", "placed_at", "placed_by", "released_at")


def hold(
    conn: psycopg.Connection[Any], relid: int | None, until: datetime | None, reason: str | None
) -> dict[str, Any]:
    """Place a hold (``audit.hold()``)."""
    with translated_errors(), write_transaction(conn), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM audit.hold(%s::oid::regclass, %s, %s)", (relid, until, reason)
        ).fetchone()
    assert row is not None
    return row


def release_holds(
    conn: psycopg.Connection[Any], ids: list[int] | None, relid: int | None, everything: bool
) -> list[dict[str, Any]]:
    """Release holds (``audit.release_holds()``)."""
    with translated_errors(), write_transaction(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM audit.release_holds(%s::bigint[], %s::oid::regclass, %s) ORDER BY id",
            (ids, relid, everything),
        ).fetchall()


def holds(conn: psycopg.Connection[Any], active: bool) -> list[dict[str, Any]]:
    """The holds, oldest first (only the active ones when ``active``)."""
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM audit.hold AS h WHERE NOT %s OR (h.released_at IS NULL"
            " AND (h.until IS NULL OR h.until > now())) ORDER BY h.id",
            (active,),
        ).fetchall()
