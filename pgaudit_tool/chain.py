"""Verify the hash chain in the client, from the raw rows, trusting no function of the database.

``audit.verify()`` runs inside the database, where a superuser can replace it (or
``audit._block_digest``) by a function that says "intact". This module recomputes every block
from the rows themselves: it reads the columns' text output under fixed settings, builds each
row's record text, hashes and chains in Python, and calls no function of the audit schema. The
format is specified in ``docs/chain.md`` so that anyone can write their own
verifier; this is the reference implementation.

It also checks the registry, layout and history-break tables against the journal that the chain
covers: each must equal the replay of its journal (a row changed without a journal entry, with
the journal trigger disabled or by TRUNCATE, is caught), and the journal must not show a layout
or history break rewritten after the fact, or a registry row's history start moved.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from heapq import merge
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql

from pgaudit_tool.results import ChainProblem

ZERO_HASH = bytes(32)
FETCH_ROWS = 2000

# Session settings under which the rows' text is read (the same as audit._block_digest's).
TEXT_SETTINGS = (
    ("timezone", "UTC"),
    ("datestyle", "ISO, YMD"),
    ("intervalstyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("search_path", "pg_catalog, pg_temp"),
)


@dataclass(frozen=True)
class Source:
    """One kind of sealed row: its letter in the digest, table, columns (in order) and order."""

    letter: bytes
    table: str
    columns: tuple[str, ...]
    order: tuple[str, ...]


SOURCES = (
    Source(
        b"T",
        "transaction",
        (
            "txid",
            "started_at",
            "db_user",
            "application_name",
            "client_addr",
            "client_port",
            "backend_pid",
            "actor",
            "context",
            "committed_at",
        ),
        ("txid",),
    ),
    Source(
        b"C",
        "change",
        (
            "id",
            "txid",
            "relid",
            "schema_name",
            "table_name",
            "op",
            "role",
            "statement_at",
            "clock_at",
            "pk",
            "old",
            "new",
        ),
        ("txid", "id"),
    ),
    Source(
        b"J",
        "journal",
        ("id", "txid", "relation", "op", "written_at", "old", "new"),
        ("txid", "id"),
    ),
)

# The journaled tables; for each, its key in the row image (for readable messages), the column
# saying from when a row applies, and whether its rows are append-only (never rewritten by a
# later transaction, never deleted).
JOURNALED = (
    "tracked_table",
    "table_layout",
    "history_break",
    "relocation",
    "retired_partition",
    "retired_block",
    "hold",
)
KEYS = {
    "tracked_table": ("relid",),
    "table_layout": ("relid", "valid_from"),
    "history_break": ("id",),
    "relocation": ("id",),
    "retired_partition": ("id", "suffix"),
    "retired_block": ("seq",),
    "hold": ("id",),
}
EFFECTIVE_FROM = {
    "tracked_table": "history_since",
    "table_layout": "valid_from",
    "history_break": "at",
}
APPEND_ONLY = frozenset(
    {"table_layout", "history_break", "relocation", "retired_partition", "retired_block"}
)
# What audit.reattach() may rewrite in an append-only row, in the transaction that records the
# relocations (audit.relocation): the table's OID, its columns' attribute numbers (pg_restore
# does not keep dropped columns) and the OIDs of its columns' own types.
RELOCATABLE = {
    "table_layout": frozenset({"relid", "attnums", "types"}),
    "history_break": frozenset({"relid"}),
}

_NEEDS_QUOTES = re.compile(rb'["\\(),\s]')


def record_text(values: Sequence[bytes | None]) -> bytes:
    """PostgreSQL's text form of a row value (record_out) from its columns' text forms."""
    parts = []
    for value in values:
        if value is None:
            parts.append(b"")
        elif value == b"" or _NEEDS_QUOTES.search(value):
            parts.append(b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'""') + b'"')
        else:
            parts.append(value)
    return b"(" + b",".join(parts) + b")"


def row_digest(letter: bytes, values: Sequence[bytes | None]) -> bytes:
    """D(row) = sha256(letter || record text), UTF-8."""
    return hashlib.sha256(letter + record_text(values)).digest()


@dataclass
class Block:
    """A row of audit.seal and what the client recomputed for it."""

    seq: int
    txid_from: int
    txid_to: int
    counts: dict[bytes, int]
    prev_hash: bytes
    hash: bytes
    inner: Any = field(default_factory=hashlib.sha256)
    found: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    retired: bool = False  # every row left the log (audit.retired_block): links checked only

    def recomputed(self) -> bytes:
        """sha256(prev_hash || sha256(row digests))."""
        return hashlib.sha256(self.prev_hash + self.inner.digest()).digest()


@dataclass(frozen=True)
class Relocation:
    """A row of audit.relocation: change rows up to ``last_change`` filed under ``new_relid``
    were captured under ``old_relid``."""

    id: int
    old_relid: bytes
    new_relid: bytes
    last_change: int


def relid_as_captured(
    relid: bytes | None, change_id: int, moves: Sequence[Relocation]
) -> bytes | None:
    """The relid a change row was captured with: the relocations that rewrote it undone,
    newest first (``moves`` in id order)."""
    for move in reversed(moves):
        if change_id <= move.last_change and relid == move.new_relid:
            relid = move.old_relid
    return relid


@dataclass
class JournalEntry:
    """One audit.journal row, for the replay."""

    id: int
    txid: int
    relation: str
    op: str
    written_at: str
    old: str | None
    new: str | None


@dataclass
class Report:
    """Result of a client-side verification: problems (empty: intact), what is not sealed,
    and what was checked by its links only because its rows left the log (``notes``)."""

    problems: list[ChainProblem]
    unsealed: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Retirement:
    """A row of audit.retired_partition: partitions dropped, and their archive files."""

    id: int
    suffix: str
    lower: str
    reason: str
    files: dict[str, Any] | None


@dataclass(frozen=True)
class Head:
    """The head of the chain kept outside the database (a checkpoint)."""

    seq: int
    hash: bytes
    txid_to: int | None = None


def verify(
    conn: psycopg.Connection[Any], head: Head | None = None, archive: Path | None = None
) -> Report:
    """Recompute the whole chain from the raw rows in one snapshot; check the registry. With
    ``archive``, the rows of dropped partitions are read from its files (each must be the file
    recorded when it was dropped) and their blocks recomputed too."""
    fresh = conn.info.transaction_status == pq.TransactionStatus.IDLE
    unsealed: dict[str, int] = {}
    orphans: dict[str, int] = {}
    journal: list[JournalEntry] = []
    problems: list[ChainProblem] = []
    with conn.transaction():
        _fixed_session(conn, fresh)
        blocks = _read_blocks(conn)
        moves = _read_relocations(conn)
        retired = _read_retirements(conn)
        files, read = ({}, set()) if archive is None else _archive_files(retired, archive, problems)
        for source in SOURCES:
            rows = merge(
                _live_digests(conn, source, journal, moves),
                _retired_digests(conn, source, read),
                *_archived_digests(files.get(source.table, []), source, moves),
                key=lambda d: (d[0], d[1]),
            )
            unsealed[source.table], orphans[source.table] = _hash_rows(source, blocks, rows)
        current = {name: _current_rows(conn, name) for name in JOURNALED}
        # Read only: rolling back also undoes the settings in a caller's transaction.
        raise psycopg.Rollback()
    problems += _chain_problems(blocks, head, archive is not None)
    problems += [
        {
            "seq": None,
            "problem": f"{n} audit.{table} row(s) below the sealed horizon are in no block",
        }
        for table, n in orphans.items()
        if n
    ]
    problems += _journal_problems(journal, current, blocks)
    return Report(problems, unsealed, _retired_notes(retired, blocks, archive))


def _fixed_session(conn: psycopg.Connection[Any], fresh: bool) -> None:
    """One consistent snapshot (when we opened the transaction), and fixed text settings."""
    if fresh:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    for name, value in TEXT_SETTINGS:
        conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))


def _read_blocks(conn: psycopg.Connection[Any]) -> list[Block]:
    retired = _exists(conn, "audit.retired_block")
    cur = conn.execute(
        sql.SQL(
            "SELECT s.seq, s.txid_from::pg_catalog.text, s.txid_to::pg_catalog.text,"
            " s.transactions, s.changes, s.journal, s.prev_hash, s.hash, {}"
            " FROM audit.seal AS s ORDER BY s.seq"
        ).format(
            sql.SQL(
                "EXISTS (SELECT FROM audit.retired_block AS r WHERE r.seq = s.seq)"
                if retired
                else "false"
            )
        )
    )
    return [
        Block(
            seq=int(r[0]),
            txid_from=int(r[1]),
            txid_to=int(r[2]),
            counts={b"T": int(r[3]), b"C": int(r[4]), b"J": int(r[5])},
            prev_hash=bytes(r[6]),
            hash=bytes(r[7]),
            retired=bool(r[8]),
        )
        for r in cur.fetchall()
    ]


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether a table exists (tables of later revisions are absent from older schemas)."""
    found = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(found and found[0])


def _read_relocations(conn: psycopg.Connection[Any]) -> list[Relocation]:
    """The rows of audit.relocation in id order (none before revision 0008)."""
    if not _exists(conn, "audit.relocation"):
        return []
    cur = conn.execute(
        "SELECT r.id, r.old_relid::pg_catalog.text, r.new_relid::pg_catalog.text, r.last_change"
        " FROM audit.relocation AS r ORDER BY r.id"
    )
    return [
        Relocation(int(r[0]), str(r[1]).encode(), str(r[2]).encode(), int(r[3]))
        for r in cur.fetchall()
    ]


def _raw_rows(
    conn: psycopg.Connection[Any], query: sql.Composable, name: str
) -> Iterator[list[bytes | None]]:
    """The rows of ``query`` as the server's text output of each column, bytes, streamed."""
    cursor = sql.Identifier(name)
    conn.execute(sql.SQL("DECLARE {} NO SCROLL CURSOR FOR {}").format(cursor, query))
    fetch = sql.SQL("FETCH FORWARD {} FROM {}").format(sql.Literal(FETCH_ROWS), cursor)
    while True:
        cur = conn.execute(fetch)
        res = cur.pgresult
        if res is None or res.ntuples == 0:
            break
        for r in range(res.ntuples):
            yield [res.get_value(r, c) for c in range(res.nfields)]
    conn.execute(sql.SQL("CLOSE {}").format(cursor))


#: A row's place in its block and its digest: (txid, id (0 for a transaction), D(row)).
Digest = tuple[int, int, bytes]


def _live_digests(
    conn: psycopg.Connection[Any],
    source: Source,
    journal: list[JournalEntry],
    moves: Sequence[Relocation] = (),
) -> Iterator[Digest]:
    """The digests of the rows of one table in the log, in block order; journal rows are also
    collected for the replay. A change row's relid is hashed as captured
    (:func:`relid_as_captured`)."""
    query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier("r", c) for c in source.columns),
        sql.SQL("{} AS r").format(sql.Identifier("audit", source.table)),
        sql.SQL(", ").join(sql.Identifier("r", c) for c in source.order),
    )
    txid_at = source.columns.index("txid")
    id_at = source.columns.index("id") if "id" in source.columns else None
    relid_at = source.columns.index("relid") if source.letter == b"C" and moves else None
    last_moved = max((m.last_change for m in moves), default=0)
    for values in _raw_rows(conn, query, f"pgaudit_verify_{source.table}"):
        txid = int(values[txid_at] or b"0")
        row_id = 0 if id_at is None else int(values[id_at] or b"0")
        if source.letter == b"J":
            journal.append(_journal_entry(values, txid))
        if relid_at is not None and row_id <= last_moved:
            values[relid_at] = relid_as_captured(values[relid_at], row_id, moves)
        yield txid, row_id, row_digest(source.letter, values)


def _retired_digests(
    conn: psycopg.Connection[Any], source: Source, read: set[int]
) -> Iterator[Digest]:
    """The digests kept of rows dropped from the log (audit.retired_row), in block order, but
    for the retirements whose rows are read from the archive (``read``)."""
    if source.letter == b"J" or not _exists(conn, "audit.retired_row"):
        return
    query = sql.SQL(
        "SELECT r.txid::pg_catalog.text, r.id, r.digest FROM audit.retired_row AS r"
        " WHERE r.kind = {} AND r.retirement <> ALL ({}) ORDER BY r.txid, r.id"
    ).format(sql.Literal(source.letter.decode()), sql.Literal(sorted(read)))
    for values in _raw_rows(conn, query, f"pgaudit_verify_retired_{source.table}"):
        txid, row_id, digest = (v or b"" for v in values)
        yield int(txid), int(row_id), bytes.fromhex(digest.decode()[2:])


def _read_retirements(conn: psycopg.Connection[Any]) -> list[Retirement]:
    """The rows of audit.retired_partition in id order (none before revision 0009)."""
    if not _exists(conn, "audit.retired_partition"):
        return []
    cur = conn.execute(
        "SELECT r.id, r.suffix, r.lower::pg_catalog.text, r.reason, r.files"
        " FROM audit.retired_partition AS r ORDER BY r.id"
    )
    return [
        Retirement(int(r[0]), str(r[1]), str(r[2]), str(r[3]), _json_or_none(r[4]))
        for r in cur.fetchall()
    ]


def _json_or_none(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    data = json.loads(value) if isinstance(value, str | bytes) else value
    return data if isinstance(data, dict) else None


def _archive_files(
    retired: list[Retirement], archive: Path, problems: list[ChainProblem]
) -> tuple[dict[str, list[Path]], set[int]]:
    """The archive's files of the dropped partitions, per table, each checked against the
    sha256 recorded when it was dropped; the retirements whose files are all there."""
    from pgaudit_tool.archive import sha256_of

    files: dict[str, list[Path]] = defaultdict(list)
    read: set[int] = set()
    for r in retired:
        if r.files is None:
            continue  # dropped without an archive (retention --no-archive)
        found: dict[str, Path] = {}
        for log in ("transaction", "change"):
            meta = r.files.get(log) or {}
            path = archive / str(meta.get("file", f"{log}_p{r.suffix}.parquet"))
            if not path.is_file():
                problems.append(
                    {"seq": None, "problem": f"archived partition {r.suffix}: {path} is missing"}
                )
            elif sha256_of(path) != meta.get("sha256"):
                problems.append(
                    {
                        "seq": None,
                        "problem": f"archived partition {r.suffix}: {path} is not the file"
                        " archived (its sha256 differs from the one recorded when the partition"
                        " was dropped)",
                    }
                )
            else:
                found[log] = path
        if len(found) == 2:  # else the digests kept in the log stand in for the pair's rows
            read.add(r.id)
            for log, path in found.items():
                files[log].append(path)
    return files, read


def _archived_digests(
    paths: list[Path], source: Source, moves: Sequence[Relocation]
) -> list[Iterator[Digest]]:
    """One iterator of digests per archive file of this table, each in block order."""
    from pgaudit_tool.archive import archived_digest_rows

    last_moved = max((m.last_change for m in moves), default=0)

    def digests(path: Path) -> Iterator[Digest]:
        for txid, row_id, values in archived_digest_rows(path, source.table):
            if source.letter == b"C" and moves and row_id <= last_moved:
                values[2] = relid_as_captured(values[2], row_id, moves)
            yield txid, row_id, row_digest(source.letter, values)

    return [digests(p) for p in paths]


def _retired_notes(
    retired: list[Retirement], blocks: list[Block], archive: Path | None
) -> list[str]:
    """What verify could only check by its links, and where history in the log starts."""
    if not retired:
        return []
    archived = sum(r.files is not None for r in retired)
    notes = [
        f"{len(retired)} partition pair(s) left the log (the oldest from {retired[0].lower}):"
        f" {archived} archived, {len(retired) - archived} dropped by retention without archive"
    ]
    linked = sum(b.retired and (archive is None or not any(b.found.values())) for b in blocks)
    if linked:
        notes.append(
            f"{linked} block(s) whose rows all left the log were checked by their links only"
            + ("" if archive else "; verify --archive DIR recomputes the archived ones")
        )
    return notes


def _hash_rows(source: Source, blocks: list[Block], rows: Iterator[Digest]) -> tuple[int, int]:
    """Feed each row's digest to the block whose range holds its txid; count the rows not
    sealed yet (at or above the last block's txid_to) and those below it in no block."""
    starts = sorted((b.txid_from, i) for i, b in enumerate(blocks))
    keys = [s[0] for s in starts]
    horizon = max((b.txid_to for b in blocks), default=0)
    unsealed = orphans = 0
    for txid, _, digest in rows:
        pos = bisect_right(keys, txid) - 1
        block = blocks[starts[pos][1]] if pos >= 0 else None
        if block is None or txid >= block.txid_to:
            if txid >= horizon:
                unsealed += 1
            else:
                orphans += 1
            continue
        block.inner.update(digest)
        block.found[source.letter] += 1
    return unsealed, orphans


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _journal_entry(values: list[bytes | None], txid: int) -> JournalEntry:
    return JournalEntry(
        id=int(values[0] or b"0"),
        txid=txid,
        relation=_text(values[2]) or "",
        op=_text(values[3]) or "",
        written_at=_text(values[4]) or "",
        old=_text(values[5]),
        new=_text(values[6]),
    )


def _current_rows(conn: psycopg.Connection[Any], name: str) -> list[str] | None:
    """The rows of a journaled table now, as jsonb text (None: the table does not exist)."""
    if not _exists(conn, f"audit.{name}"):
        return None
    query = sql.SQL("SELECT pg_catalog.to_jsonb(r) FROM {} AS r").format(
        sql.Identifier("audit", name)
    )
    return [_text(v[0]) or "" for v in _raw_rows(conn, query, f"pgaudit_verify_{name}")]


# -- the chain ---------------------------------------------------------------------------------


def _chain_problems(
    blocks: list[Block], head: Head | None, archived: bool = False
) -> list[ChainProblem]:
    problems: list[ChainProblem] = []

    def report(seq: int, text: str) -> None:
        problems.append({"seq": seq, "problem": text})

    expect_seq, expect_from, prev = 1, 0, ZERO_HASH
    for block in blocks:
        if block.seq != expect_seq:
            report(block.seq, f"block {expect_seq} is missing (found {block.seq} next)")
        if block.txid_from != expect_from:
            report(
                block.seq,
                f"block covers transactions from {block.txid_from}, expected from {expect_from}",
            )
        if block.prev_hash != prev:
            report(block.seq, "previous-hash link broken: a block before it was changed or removed")
        found = [block.found.get(k, 0) for k in (b"T", b"C", b"J")]
        sealed = [block.counts[k] for k in (b"T", b"C", b"J")]
        if block.retired and (not archived or not any(found)):
            pass  # its rows left the log (and are not in the archive): links checked only
        elif found != sealed:
            report(
                block.seq,
                "rows inserted or deleted: {} transactions, {} changes and {} journal rows now,"
                " {}, {} and {} when sealed".format(*found, *sealed),
            )
        elif block.recomputed() != block.hash:
            report(block.seq, "rows edited or reordered: the block's hash does not match its rows")
        expect_seq, expect_from, prev = block.seq + 1, block.txid_to, block.hash
    if head is not None:
        problems += _head_problems(blocks, head)
    return problems


def _head_problems(blocks: list[Block], head: Head) -> list[ChainProblem]:
    kept = next((b for b in blocks if b.seq == head.seq), None)
    if kept is None:
        text = (
            "the checkpointed block is no longer in the chain: the log was truncated or rewritten"
        )
        return [{"seq": head.seq, "problem": text}]
    if kept.hash != head.hash or head.txid_to not in (None, kept.txid_to):
        text = "the block differs from the checkpoint kept outside the database"
        return [{"seq": head.seq, "problem": text}]
    return []


# -- the registry against its journal ----------------------------------------------------------


def _journal_problems(
    journal: list[JournalEntry],
    current: dict[str, list[str] | None],
    blocks: list[Block],
) -> list[ChainProblem]:
    """Replay the journal in write order; compare with the tables now; flag rewrites."""
    problems: list[ChainProblem] = []
    state: dict[str, dict[str, list[JournalEntry]]] = {
        name: defaultdict(list) for name in JOURNALED
    }
    relocating = {e.txid for e in journal if e.relation == "relocation" and e.op == "I"}
    for entry in sorted(journal, key=lambda e: e.id):
        rows = state.setdefault(entry.relation, defaultdict(list))
        if entry.old is not None:
            writers = rows.get(entry.old)
            if not writers:
                problems.append(_at(entry, blocks, "its previous version is not in the journal"))
            else:
                previous = writers.pop()
                if not _relocated(entry, relocating):
                    problems += _rewrite_problems(entry, previous, blocks)
        if entry.new is not None:
            problems += _retroactive_problems(entry, blocks)
            rows[entry.new].append(entry)
    for name in JOURNALED:
        problems += _compare(name, state.get(name, {}), current.get(name))
    return problems


def _relocated(entry: JournalEntry, relocating: set[int]) -> bool:
    """An update by audit.reattach() of what it may rewrite: in a transaction that recorded
    relocations, only the OIDs of an append-only row (``RELOCATABLE``) changed."""
    allowed = RELOCATABLE.get(entry.relation)
    if entry.op != "U" or entry.txid not in relocating or allowed is None:
        return False
    old, new = json.loads(entry.old or "null"), json.loads(entry.new or "null")
    if not isinstance(old, dict) or not isinstance(new, dict) or set(old) != set(new):
        return False
    return all(k in allowed for k in old if old[k] != new[k])


def _seq_of(txid: int, blocks: list[Block]) -> int | None:
    return next((b.seq for b in blocks if b.txid_from <= txid < b.txid_to), None)


def _at(entry: JournalEntry, blocks: list[Block], text: str) -> ChainProblem:
    return {
        "seq": _seq_of(entry.txid, blocks),
        "problem": f"journal entry {entry.id} ({entry.op} audit.{entry.relation},"
        f" transaction {entry.txid}): {text}",
    }


def _rewrite_problems(
    entry: JournalEntry, previous: JournalEntry, blocks: list[Block]
) -> list[ChainProblem]:
    """A later transaction rewrote or deleted an append-only row, or moved a history start."""
    if previous.txid == entry.txid:
        return []
    if entry.relation in APPEND_ONLY:
        what = "deleted" if entry.op == "D" else "rewritten"
        return [_at(entry, blocks, f"a row written by transaction {previous.txid} was {what}")]
    if entry.op == "D":
        return [_at(entry, blocks, "a registry row was deleted (rows are kept after disable)")]
    column = EFFECTIVE_FROM.get(entry.relation)
    if column and _field(entry.old, column) != _field(entry.new, column):
        return [_at(entry, blocks, f"{column} of an existing row was changed")]
    return []


def _retroactive_problems(entry: JournalEntry, blocks: list[Block]) -> list[ChainProblem]:
    """A row version made to apply from before the transaction that wrote it started."""
    column = EFFECTIVE_FROM.get(entry.relation)
    if entry.op == "B" or column is None:
        return []
    value = _field(entry.new, column)
    if entry.op == "U" and value == _field(entry.old, column):
        return []
    if not isinstance(value, str):
        return []
    if _instant(value) < _instant(entry.written_at):
        return [_at(entry, blocks, f"{column} {value} is before the writing transaction started")]
    return []


def _field(image: str | None, column: str) -> Any:
    if image is None:
        return None
    data = json.loads(image)
    return data.get(column) if isinstance(data, dict) else None


def _instant(text: str) -> datetime:
    """A timestamptz from jsonb (ISO 8601) or from its ISO text output ('+00' offset)."""
    value = text.replace(" ", "T", 1)
    if re.search(r"[+-]\d\d$", value):
        value += ":00"
    return datetime.fromisoformat(value)


def _compare(
    name: str, replayed: dict[str, list[JournalEntry]], now: list[str] | None
) -> list[ChainProblem]:
    """Rows of the table now that the journal does not end with, and the reverse; a row of
    each with the same key is reported once, with the columns that differ."""
    expected: dict[str, int] = {k: len(v) for k, v in replayed.items() if v}
    seen: dict[str, int] = defaultdict(int)
    for image in now or []:
        seen[image] += 1
    extra: dict[str, list[str]] = defaultdict(list)
    missing: dict[str, list[str]] = defaultdict(list)
    for image in sorted(set(expected) | set(seen)):
        diff = seen.get(image, 0) - expected.get(image, 0)
        target = extra if diff > 0 else missing
        target[_describe(name, image)] += [image] * abs(diff)
    problems: list[ChainProblem] = []
    for key in sorted(set(extra) | set(missing)):
        for new, old in zip(extra[key], missing[key], strict=False):
            text = (
                f"audit.{name} row {key} differs from its journaled version (journal entry"
                f" {replayed[old][-1].id}) in {', '.join(_differing(old, new))}: changed"
                " without a journal entry"
            )
            problems.append({"seq": None, "problem": text})
        pairs = min(len(extra[key]), len(missing[key]))
        for _ in extra[key][pairs:]:
            text = f"audit.{name} row {key} was written without a journal entry"
            problems.append({"seq": None, "problem": text})
        for old in missing[key][pairs:]:
            text = (
                f"audit.{name} row {key} (journal entry {replayed[old][-1].id}) was deleted"
                " without a journal entry"
            )
            problems.append({"seq": None, "problem": text})
    return problems


def _differing(old: str, new: str) -> list[str]:
    """Names of the columns whose values differ between two row images."""
    a, b = json.loads(old), json.loads(new)
    if not isinstance(a, dict) or not isinstance(b, dict):
        return ["the whole row"]
    return sorted(k for k in set(a) | set(b) if a.get(k, a) != b.get(k, b)) or ["no column"]


def _describe(name: str, image: str) -> str:
    data = json.loads(image)
    keys = KEYS.get(name)
    if not isinstance(data, dict) or keys is None:
        return image if len(image) <= 200 else image[:200] + "..."
    return ", ".join(f"{k}={data.get(k)}" for k in keys)
