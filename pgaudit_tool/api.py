"""The Python API: one object per database, one method per CLI command.

from pgaudit_tool import Audit

with Audit.connect("postgresql://dba@db/shop") as audit:
    audit.install()
    audit.enable("sales.orders", exclude=["password_hash"])
    with audit.actor("alice", {"ticket": "T-1"}):
        audit.conn.execute("UPDATE sales.orders SET amount = 10 WHERE id = 1")
    for change in audit.history("sales.orders"):
        print(change["op"], change["pk"], change["actor"])
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
from psycopg.sql import Composable
from psycopg.types.json import set_json_loads

from pgaudit_tool import archive as _archive
from pgaudit_tool import chain as _chain
from pgaudit_tool import history as _history
from pgaudit_tool import integrity as _integrity
from pgaudit_tool import partitions as _partitions
from pgaudit_tool import reconstruct as _reconstruct
from pgaudit_tool import report as _report
from pgaudit_tool import revert as _revert
from pgaudit_tool import schema, tables
from pgaudit_tool import watch as _watch
from pgaudit_tool.archive_lines import archived_lines, archived_values
from pgaudit_tool.connection import PasswordPrompt, connect, login, resolve_conninfo
from pgaudit_tool.context import audit_context
from pgaudit_tool.db import (
    TableRef,
    conninfo_of,
    jsonb,
    load_json,
    lock_timeout_of,
    note_change,
    resolve_table,
    translate,
    translated_errors,
)
from pgaudit_tool.errors import InvalidInput, TableNotSuitable
from pgaudit_tool.output import to_json_text
from pgaudit_tool.reconstruct import normalize_key_part, normalize_pk
from pgaudit_tool.results import ChainProblem, Finding, TableStatus
from pgaudit_tool.rules import Rules, load_rules
from pgaudit_tool.timeparse import instant

if TYPE_CHECKING:
    from pgaudit_tool.bench import BenchConfig

#: A row key: a JSON object as text or a dict, or a bare value (single-column keys).
Key = str | int | dict[str, Any]
#: An instant: an aware datetime, or text (ISO-8601, ``yesterday``, ``2 hours ago``, ``@EPOCH``).
When = datetime | str


@dataclass(frozen=True)
class InstallResult:
    """Schema revision before and after :meth:`Audit.install` (``before`` None: fresh install);
    ``refreshed``: at the same revision, the functions, views and triggers were re-applied
    (another version of the tool had applied them, or ``repair``)."""

    before: str | None
    after: str
    refreshed: bool = False

    @property
    def changed(self) -> bool:
        """Whether the install changed the schema (a revision ran or the functions were
        re-applied)."""
        return self.before != self.after or self.refreshed


class EnableResult(list[TableStatus]):
    """What :meth:`Audit.enable` returns: a list with the status record of each table enabled
    (as :meth:`Audit.status` has them), and ``skipped``: each table left out because it cannot
    be audited (``skip_unsuitable``), by schema-qualified name, with the reason."""

    def __init__(
        self, enabled: Iterable[TableStatus] = (), skipped: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(enabled)
        self.skipped: dict[str, str] = dict(skipped or {})


class Audit:
    """pgaudit_tool operations on one database connection."""

    def __init__(self, conn: psycopg.Connection[Any], conninfo: str | None = None) -> None:
        self.conn = conn
        # Row images are a writer's data: read them however deeply nested (see jsonsafe).
        set_json_loads(load_json, conn)
        self._conninfo = conninfo
        self._archive_reads = False  # reconstruction reads an archive too (see _read_with)

    @classmethod
    def connect(
        cls,
        dsn: str | None = None,
        *,
        lock_timeout: str | None = None,
        params: Mapping[str, str | None] | None = None,
        password_prompt: PasswordPrompt | None = None,
    ) -> Audit:
        """Connect by the libpq rules: ``dsn``, else PG* variables / service file, else DATABASE_URL.

        ``lock_timeout`` bounds how long a command waits for a lock on what it changes (``"5s"``,
        ``"1min"``; ``"0"``: no limit); by default 5 s unless the server, database, role or
        PGOPTIONS set lock_timeout. A command that times out raises LockTimeout, nothing changed.
        ``params``: ``host``, ``port``, ``user``, ``dbname`` overriding those of the connection
        string (psql's -h, -p, -U, -d). ``password_prompt(user)``: asked for the password when
        the server wants one that no libpq source gave.
        """
        conn, conninfo = login(
            resolve_conninfo(dsn, params=params),
            lock_timeout=lock_timeout,
            password_prompt=password_prompt,
        )
        return cls(conn, conninfo)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Audit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- setup -------------------------------------------------------------------------------
    def install(
        self,
        *,
        repair: bool = False,
        partition_interval: str | None = None,
        partitions_ahead: int | None = None,
    ) -> InstallResult:
        """Create or upgrade the audit schema to this tool's revision (idempotent, one transaction).

        At this revision already, its functions, views and triggers are re-applied (and capture
        functions regenerated) when another version of the tool applied them, or with
        ``repair`` (after one was dropped or edited by hand).
        ``partition_interval`` (PostgreSQL interval text: "1 week", the default, "1 day",
        "1 month", at least "1 minute") and ``partitions_ahead`` (intervals after now that
        :meth:`maintain` keeps partitions for, default 3): settings of the partitioned log, from
        the first partition on at install, for the partitions created from now on otherwise.
        """
        wanted = None
        if partition_interval is not None or partitions_ahead is not None:
            wanted = schema.Partitioning(partition_interval, partitions_ahead)
        with translated_errors():
            before, after, refreshed = schema.install(
                self.conninfo,
                lock_timeout_of(self.conn),
                repair=repair,
                partitioning=wanted,
                committing=lambda: note_change(self.conn),
            )
        return InstallResult(before, after, refreshed)

    def install_sql(self, *, repair: bool = False) -> str:
        """The SQL :meth:`install` would run on this database (``install --dry-run``)."""
        with translated_errors():
            revision = schema.installed_revision(self.conn)
            return schema.upgrade_sql(
                revision,
                repair=repair,
                current_functions=revision is None or schema.functions_current(self.conn),
            )

    def installed_revision(self) -> str | None:
        """The installed schema revision, or None."""
        with translated_errors():
            return schema.installed_revision(self.conn)

    def enable(
        self,
        *names: str,
        schemas: Sequence[str] = (),
        exclude: Sequence[str] | None = None,
        capture_truncate: bool | None = None,
        skip_unsuitable: bool = False,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> EnableResult:
        """Audit the named tables and every table of ``schemas``, all or nothing.

        Tables that cannot be audited (no key, not a table) make the whole call fail with every
        reason listed, unless ``skip_unsuitable``, which leaves them out.
        Returns the status record of each table enabled, a list whose ``skipped`` maps each
        table left out to the reason (see :class:`EnableResult`). ``progress(done, total,
        table)`` is called before each table and at the end (``done == total``).
        """
        self._require_installed()
        refs = tables.tables_to_audit(self.conn, names, schemas)
        problems = tables.unsuitable_tables(self.conn, refs)
        if problems and not skip_unsuitable:
            listing = "; ".join(f"{name}: {why}" for name, why in problems.items())
            raise TableNotSuitable(
                f"cannot audit {len(problems)} table(s), nothing was changed: {listing}",
                hint="Fix those tables, or leave them out (--skip-unsuitable).",
            )
        refs = [r for r in refs if r.name not in problems]
        enabled = tables.enable(
            self.conn,
            refs,
            exclude=exclude,
            capture_truncate=capture_truncate,
            schemas=schemas,
            progress=progress,
        )
        return EnableResult(enabled, problems)

    def disable(self, *names: str, schemas: Sequence[str] = ()) -> dict[str, bool]:
        """Stop capture on the tables (history stays). Maps each table to whether it was audited."""
        self._require_installed()
        return tables.disable(self.conn, tables.tables_to_audit(self.conn, names, schemas), schemas)

    def refresh(self, *names: str) -> None:
        """Regenerate capture of audited tables after DDL."""
        self._require_installed()
        tables.refresh(self.conn, tables.tables_to_audit(self.conn, names))

    def status(self) -> list[TableStatus]:
        """What is audited, with the state of each table's capture triggers."""
        self._require_installed()
        return tables.status(self.conn)

    # -- querying ------------------------------------------------------------------------------
    def history(
        self,
        table: str | None = None,
        *,
        pk: Key | None = None,
        actor: str | None = None,
        db_user: str | None = None,
        txid: int | None = None,
        op: str | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
        last: int | None = None,
        archive: Path | str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Changes, oldest first, streamed from a server-side cursor.

        ``pk``: a JSON object (str or dict) or a bare value for a single-column key (needs
        ``table``). ``since`` (inclusive) and ``until`` (exclusive): datetimes, ISO-8601 text,
        PostgreSQL words (``yesterday``), an interval and ``ago`` (``"1h30m ago"``) or
        ``"@1700000000"`` (Unix epoch seconds). ``limit``: only the oldest N matching changes;
        ``last``: only the N most recent, still listed oldest first (not both). ``archive``: a
        directory written by :meth:`archive`: changes of dropped partitions are read from it
        too, as if they had never left the log (needs DuckDB).
        """
        flt = self._history_filter(
            table, pk=pk, actor=actor, db_user=db_user, txid=txid, op=op, since=since,
            until=until, limit=limit, last=last,
        )  # fmt: skip
        if archive is not None and not flt.pk_part:
            # Archived rows read by DuckDB, merged with the live log's (archive_lines).
            pairs = _archive.archived_pairs(self.conn, Path(archive))
            archived = archived_values(self.conn, pairs, flt, self._key_texts(flt))
            return _history.history_merged(self.conn, flt, archived)
        return _history.history(self.conn, flt, self._history_source(flt, archive))

    def export_history(
        self,
        out: BinaryIO,
        fmt: str,
        table: str | None = None,
        *,
        archive: Path | str | None = None,
        **filters: Any,
    ) -> None:
        """Write the changes :meth:`history` would list (same filters) to ``out`` as ``csv``,
        ``json`` or ``jsonl`` text written by the server, at the speed of COPY (see
        :mod:`pgaudit_tool.export` for the forms of values)."""
        flt = self._history_filter(table, **filters)
        if archive is not None and fmt in ("json", "jsonl") and not flt.pk_part:
            # Archived rows rendered by DuckDB, merged with the live log's (archive_lines).
            pairs = _archive.archived_pairs(self.conn, Path(archive))
            archived = archived_lines(self.conn, pairs, flt, self._key_texts(flt))
            _history.export_history(self.conn, flt, fmt, out, archived=archived)
            return
        _history.export_history(self.conn, flt, fmt, out, self._history_source(flt, archive))

    def _key_texts(self, flt: _history.HistoryFilter) -> _archive.KeyTexts | None:
        """The filter's whole key as the archive finds it (None: no whole key)."""
        if flt.pk is None or flt.table is None or flt.pk_part:
            return None
        return self._archived_keys(flt.table, [flt.pk])

    def _archived_keys(self, table: TableRef, keys: Sequence[Any]) -> _archive.KeyTexts | None:
        """Whole keys of ``table`` (as the log stores them) as the archive finds them, under
        today's column names and past layouts' (None: too many to name, read every key)."""
        if len(keys) > _archive.KEYS_NAMED:
            return None
        with translated_errors():
            row = self.conn.execute(
                "SELECT ARRAY(SELECT DISTINCT v::text FROM pg_catalog.unnest(%s::jsonb[]) AS k,"
                " pg_catalog.unnest(audit._pk_variants(%s::oid::regclass, k)) AS v),"
                " audit._key_holds_numeric(%s::oid::regclass)",
                ([jsonb(k) for k in keys], table.oid, table.oid),
            ).fetchone()
        return None if row is None else _archive.KeyTexts(list(row[0]), bool(row[1]))

    def _history_source(
        self, flt: _history.HistoryFilter, archive: Path | str | None
    ) -> Composable:
        """The live history view, or with an archive a view that adds its rows."""
        if archive is None:
            return _history.LIVE
        selection = _archive.Selection(
            relid=None if flt.table is None else flt.table.oid,
            key=self._key_texts(flt),
            txid=flt.txid,
            since=flt.since,
            until=flt.until,
            actor=flt.actor,
            db_user=flt.db_user,
        )
        return _archive.attach(self.conn, Path(archive), selection)

    def _history_filter(
        self,
        table: str | None,
        *,
        pk: Key | None = None,
        since: When | None = None,
        until: When | None = None,
        **rest: Any,
    ) -> _history.HistoryFilter:
        self._require_installed()
        if pk is not None and table is None:
            raise InvalidInput(
                "a key needs a table", hint="Name the table: history TABLE --pk KEY."
            )
        ref = None if table is None else resolve_table(self.conn, table)
        key, whole = None, True
        if pk is not None and ref is not None:
            key, whole = normalize_key_part(self.conn, ref, pk)
        return _history.HistoryFilter(
            table=ref,
            pk=key,
            pk_part=not whole,
            since=self._instant(since),
            until=self._instant(until),
            **rest,
        )

    def transaction(self, txid: int, *, archive: Path | str | None = None) -> list[dict[str, Any]]:
        """Everything one transaction did, across tables, in order (``archive``: also when
        its partition was archived and dropped, see :meth:`history`)."""
        changes = list(self.history(txid=txid, archive=archive))
        if not changes:
            left = _partitions.retired(self.conn, txid=txid)
            if left:
                raise InvalidInput(
                    f"no change of transaction {txid} is in the live log"
                    + ("" if archive is None else f" nor in the archive {archive}"),
                    hint=_partitions.retired_note(left),
                )
            raise InvalidInput(f"no audited change belongs to transaction {txid}")
        return changes

    def blame(
        self, table: str, pk: Key, *, archive: Path | str | None = None
    ) -> list[dict[str, Any]]:
        """Who last set each column of a row (that exists now), and when; each line names the
        row's key (``pk``). A part of a composite key gives the lines of every row having it.
        ``archive``: also the changes of partitions archived there and dropped (see
        :meth:`archive`)."""
        self._require_installed()
        ref = resolve_table(self.conn, table)
        key, whole = normalize_key_part(self.conn, ref, pk)
        rows = [key] if whole else _reconstruct.live_keys(self.conn, ref, key)
        if not rows:
            raise InvalidInput(
                f"no row of {ref.name} has the key part {to_json_text(key)} now",
                hint="Use history with the same key to see what happened to such rows.",
            )
        self._read_with(archive, ref, keys=rows)
        return [line for row in rows for line in _reconstruct.blame(self.conn, ref, row)]

    def row_at(
        self, table: str, pk: Key, at: When, *, archive: Path | str | None = None
    ) -> dict[str, Any] | None:
        """The row as it was at ``at`` (JSON values under today's column names), or None.
        ``archive``: for instants before changes dropped from the log (see :meth:`archive`)."""
        self._require_installed()
        ref = resolve_table(self.conn, table)
        key, instant = normalize_pk(self.conn, ref, pk), self._at(at)
        self._read_with(archive, ref, committed_after=instant, keys=[key])
        found = _reconstruct.row_at(self.conn, ref, key, instant)
        return None if found is None else dict(found)

    def table_at(
        self, table: str, at: When, *, archive: Path | str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The whole table as it was at ``at``: typed rows, streamed (``archive``: see
        :meth:`row_at`)."""
        ref, instant = self._reconstructing(table, at, archive)
        return _reconstruct.table_at(self.conn, ref, instant)

    def export_table_at(
        self, out: BinaryIO, fmt: str, table: str, at: When, *, archive: Path | str | None = None
    ) -> None:
        """Write the table as it was at ``at``, in key order, to ``out`` as ``csv`` (COPY's,
        which loads back with COPY FROM), ``json`` or ``jsonl`` written by the server."""
        ref, instant = self._reconstructing(table, at, archive)
        _reconstruct.export_table_at(self.conn, ref, instant, fmt, out)

    def table_at_into(
        self, table: str, at: When, into: str, *, archive: Path | str | None = None
    ) -> int:
        """Create the new table ``into`` holding the table as it was at ``at`` (original column
        types); returns its row count. An existing ``into`` is an error."""
        ref, instant = self._reconstructing(table, at, archive)
        return _reconstruct.table_at_into(self.conn, ref, instant, into)

    def diff(
        self,
        table: str,
        since: When,
        until: When = "now",
        *,
        archive: Path | str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Net change of every row between two instants, consolidated, streamed."""
        ref, start = self._reconstructing(table, since, archive)
        return _reconstruct.diff(self.conn, ref, start, self._at(until))

    def _reconstructing(
        self, table: str, at: When, archive: Path | str | None
    ) -> tuple[TableRef, datetime]:
        """The table and instant of a reconstruction, the archive's changes committed after
        that instant loaded when ``archive`` is given (see :meth:`_read_with`)."""
        self._require_installed()
        ref = resolve_table(self.conn, table)
        instant = self._at(at)
        self._read_with(archive, ref, committed_after=instant)
        return ref, instant

    def _read_with(
        self,
        archive: Path | str | None,
        table: TableRef,
        committed_after: datetime | None = None,
        keys: Sequence[Any] | None = None,
    ) -> None:
        """Make the reconstruction functions read the live log only, or (``archive``) the live
        log and the archived changes of ``table`` they may need (of transactions committed
        after ``committed_after``, of the rows ``keys``, each None: all), loaded into temporary
        tables of this session (``audit._log_sql``)."""
        if archive is None:
            if self._archive_reads:
                with translated_errors():
                    self.conn.execute("SELECT set_config('pgaudit.read_archive', 'off', false)")
                self._archive_reads = False
            return
        selection = _archive.Selection(
            relid=table.oid,
            key=None if keys is None else self._archived_keys(table, keys),
            committed_after=committed_after,
        )
        _archive.attach(self.conn, Path(archive), selection)
        with translated_errors():
            self.conn.execute("SELECT set_config('pgaudit.read_archive', 'on', false)")
        self._archive_reads = True

    def revert(
        self,
        *,
        changes: Sequence[int] | None = None,
        txids: Sequence[int] | None = None,
        actor: str | None = None,
        db_user: str | None = None,
        since: When | None = None,
        until: When | None = None,
        table: str | None = None,
        pk: Key | None = None,
        to: When | None = None,
        on_conflict: str = "abort",
        fire_triggers: bool = False,
        dry_run: bool = False,
        by: str = _revert.DEFAULT_ACTOR,
        confirm: _revert.Confirm | None = None,
        progress: _revert.Progress | None = None,
    ) -> _revert.RevertResult:
        """Undo recorded changes, row by row, in one transaction (see :mod:`pgaudit_tool.revert`).

        Select by ``changes`` (ids), ``txids``, ``actor`` and/or ``db_user`` with ``since``
        (and ``until``): the transactions that committed after ``since`` and at or before
        ``until``; ``table`` with ``to`` (and ``pk``): the table (or row) back to its state at
        ``to``. ``on_conflict``: abort (raise RevertConflict, change nothing), skip (leave
        conflicting rows) or force (overwrite them). ``by``: the actor recorded for the
        revert itself. ``dry_run``: plan only. ``confirm(result)`` is asked before changing data.
        The tables' application triggers (not constraint triggers, not capture) are switched
        off while the revert writes, so rows come back exactly as recorded (this needs
        ownership of the tables); ``fire_triggers=True`` lets them fire.
        """
        self._require_installed()
        ref = None if table is None else resolve_table(self.conn, table)
        if ref is not None and pk is not None:
            normalize_pk(self.conn, ref, pk)  # InvalidInput for a value the key cannot hold
        chosen = _revert.RevertSelection(
            changes=None if changes is None else tuple(changes),
            txids=None if txids is None else tuple(txids),
            actor=actor,
            db_user=db_user,
            since=self._instant(since),
            until=self._instant(until),
            table=None if ref is None else ref.name,
            pk=pk,
            to=self._instant(to),
        )
        return _revert.run(
            self.conn,
            chosen,
            on_conflict=on_conflict,
            actor=by,
            fire_triggers=fire_triggers,
            dry_run=dry_run,
            confirm=confirm,
            progress=progress,
        )

    def instant(self, text: str) -> datetime:
        """The instant a user's text names (ISO-8601, ``yesterday``, ``1h30m ago``, ``@1700000000``)."""
        return instant(self.conn, text)

    def report(
        self,
        *,
        since: When | None = None,
        until: When | None = None,
        tables: Sequence[str] | str = (),
        actors: Sequence[str] | str = (),
        db_users: Sequence[str] | str = (),
        title: str | None = None,
        limits: _report.Limits | None = None,
        progress: _report.Progress | None = None,
    ) -> dict[str, Any]:
        """The report of the changes captured in [since, until) (default: from the first change
        recorded until now), of ``tables``, ``actors`` (application users) and ``db_users``
        (login roles) when given: the aggregates computed on the server, as one dict (the json
        format; keys in :mod:`pgaudit_tool.report`). ``pgaudit_tool.report.render(report, fmt)``
        writes it as ``html``, ``md`` or ``json``. ``progress(step, total, label)`` before each
        step."""
        self._require_installed()
        tables, actors, db_users = (
            [given] if isinstance(given, str) else list(given)
            for given in (tables, actors, db_users)
        )
        refs = [resolve_table(self.conn, t) for t in tables]
        start = self._instant(since)
        end = self._at("now") if until is None else self._at(until)
        if start is not None and start >= end:
            raise InvalidInput(
                f"the report's window is empty: since ({start.isoformat()}) is not before until"
                f" ({end.isoformat()})",
                hint="Give a since before until.",
            )
        return _report.collect(
            self.conn,
            since=start,
            until=end,
            tables=refs,
            actors=actors,
            db_users=db_users,
            title=title,
            limits=limits or _report.Limits(),
            progress=progress,
        )

    # -- integrity -----------------------------------------------------------------------------
    def checkpoint(self, output: Path | None = None) -> dict[str, Any]:
        """Seal the finished transactions into the hash chain; the head to keep outside the database.

        ``output``: also write the head to this file, flushed to disk before the block is
        committed (InvalidInput, nothing sealed, when it cannot be written).
        """
        self._require_installed()
        return _integrity.checkpoint(self.conn, output)

    def verify(
        self, against: dict[str, Any] | None = None, *, archive: Path | str | None = None
    ) -> list[ChainProblem]:
        """Problems in the hash chain and the registry (empty: intact), recomputed in the client
        from the raw rows; also against a kept checkpoint (InvalidInput if it is malformed).
        ``archive``: a directory written by :meth:`archive`; the rows of dropped partitions are
        read from it and their blocks recomputed (a file missing, replaced or edited is a
        problem)."""
        return self.verify_report(against, archive=archive).problems

    def verify_report(
        self, against: dict[str, Any] | None = None, *, archive: Path | str | None = None
    ) -> _chain.Report:
        """:meth:`verify`'s problems, how many rows are not sealed yet, per table, and notes on
        history that left the log."""
        self._require_installed()
        return _integrity.verify_report(
            self.conn, against, None if archive is None else Path(archive)
        )

    def doctor(self) -> list[Finding]:
        """Problems with auditing: triggers, drift after DDL, keys, privileges, guards, chain."""
        self._require_installed()
        return _integrity.doctor(self.conn)

    def maintain(self) -> list[dict[str, Any]]:
        """For cron: seal the finished transactions and create the partitions the log needs
        (ahead of now, and for rows that landed in the default partitions), in one transaction,
        without making audited writes wait. One record per action: ``action`` (sealed, created
        partitions), ``object``, ``lower``/``upper`` (a partition's range), ``rows`` (changes
        sealed, or rows moved out of the default partitions). Idempotent."""
        self._require_installed()
        return _partitions.maintain(self.conn)

    def archive(
        self,
        before: When,
        directory: Path | str,
        *,
        drop: bool = False,
        dry_run: bool = False,
        confirm: Callable[[_archive.Plan], bool] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> _archive.Result:
        """Write the sealed partition pairs of the log older than ``before`` (whole partitions,
        ending at or before it) to Parquet files in ``directory`` with a manifest, read them
        back, and with ``drop`` drop them in one transaction (refused under a legal hold, or
        when they changed since). Re-running resumes: intact files are kept. ``confirm(plan)``
        is asked before a drop; ``dry_run`` only plans (``Result.drop_sql``: the drop's SQL).
        Needs DuckDB (``pip install 'pgaudit-tool[archive]'``)."""
        self._require_installed()
        return _archive.run(
            self.conn,
            self._at(before),
            Path(directory),
            drop=drop,
            dry_run=dry_run,
            confirm=confirm,
            progress=progress,
        )

    def retention(
        self,
        keep: str,
        *,
        archive_to: Path | str | None = None,
        no_archive: bool = False,
        dry_run: bool = False,
        confirm: Callable[[_archive.Plan], bool] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> _archive.Result:
        """The retention policy, for cron: seal, then drop the partition pairs that ended more
        than ``keep`` ago (PostgreSQL interval text: "90 days", "7 years"), oldest first, up to
        the first one under a legal hold, after archiving them to ``archive_to``; with
        ``no_archive`` (which must be said) they are dropped without an archive, and recorded in
        audit.retired_partition, sealed at once: ``verify`` still proves the rest and says
        where history starts."""
        self._require_installed()
        if (archive_to is None) == (not no_archive):
            raise InvalidInput(
                "retention needs an archive directory or an explicit no-archive",
                hint="--archive-to DIR, or --no-archive to delete history for good",
            )
        return _archive.retention(
            self.conn,
            keep,
            None if archive_to is None else Path(archive_to),
            dry_run=dry_run,
            confirm=confirm,
            progress=progress,
        )

    def hold(
        self, table: str | None = None, *, until: When | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Place a legal hold on a table's history (``table`` None: the whole log): archive
        --drop and retention refuse to drop what it covers until it is released or ``until``
        passes. Returns the hold."""
        self._require_installed()
        ref = None if table is None else resolve_table(self.conn, table)
        return _archive.hold(
            self.conn, None if ref is None else ref.oid, self._instant(until), reason
        )

    def release_holds(
        self,
        ids: Sequence[int] | None = None,
        *,
        table: str | None = None,
        everything: bool = False,
    ) -> list[dict[str, Any]]:
        """Release legal holds: by id, every active hold on ``table``, or (``everything``) the
        holds on the whole log. Returns the holds released."""
        self._require_installed()
        ref = None if table is None else resolve_table(self.conn, table)
        return _archive.release_holds(
            self.conn,
            None if ids is None else list(ids),
            None if ref is None else ref.oid,
            everything,
        )

    def holds(self, *, active: bool = True) -> list[dict[str, Any]]:
        """The legal holds (only the active ones unless ``active`` is False)."""
        self._require_installed()
        return _archive.holds(self.conn, active)

    def partitions(self) -> list[dict[str, Any]]:
        """The partitions of the log: ``log`` (change or transaction), ``partition``, the range
        [``lower``, ``upper``) of transaction start times (None: the default partition) and
        ``estimated_rows`` (the planner's estimate, None before the first ANALYZE)."""
        self._require_installed()
        return _partitions.partitions(self.conn)

    def retired(
        self,
        table: str | None = None,
        *,
        since: When | None = None,
        until: When | None = None,
        txid: int | None = None,
    ) -> list[dict[str, Any]]:
        """The partition pairs that left the log (``archive --drop``, ``retention``) and may
        have held changes of ``table``, captured in [``since``, ``until``), of transaction
        ``txid`` (each None: any): what readings of the live log alone miss (``history``
        without ``archive``). One record per pair, oldest first: the range [``lower``,
        ``upper``) of transaction start times, ``transactions``, ``changes``, ``txid_min``,
        ``txid_max``, ``committed_max`` (latest commit), ``tables``, ``reason`` (archive,
        retention), ``archive`` (the directory, None: dropped without an archive),
        ``retired_at``, ``retired_by``."""
        self._require_installed()
        relid = None if table is None else resolve_table(self.conn, table).oid
        return _partitions.retired(
            self.conn, relid, self._instant(since), self._instant(until), txid
        )

    def reattach(self, *, dry_run: bool = False) -> list[dict[str, Any]]:
        """After pg_dump/pg_restore into another database or cluster: find every registered
        table by name and file its registry row, layouts, history, breaks, guard and alerts
        under its OID here; regenerate capture (``audit.reattach()``, one transaction).
        One record per table: ``table_name``, ``old_relid``, ``new_relid``, ``action``
        (moved, unchanged, missing: ...). ``dry_run``: only report."""
        self._require_installed()
        return _integrity.reattach(self.conn, dry_run=dry_run)

    def apply_fixes(self, fixes: list[str]) -> None:
        """Run the fix statements :meth:`doctor` proposed, in one transaction."""
        self._require_installed()
        _integrity.apply_fixes(self.conn, fixes)

    # -- watching ------------------------------------------------------------------------------
    def rules(self, path: Path | str | None = None) -> Rules:
        """The watcher's rules from a TOML file (None: the built-in defaults), checked against
        this database (InvalidInput naming the line and key of a mistake)."""
        self._require_installed()
        return _watch.resolve_rules(self.conn, load_rules(path))

    def anomalies(
        self,
        since: When | None = None,
        until: When | None = None,
        rules: Rules | Path | str | None = None,
    ) -> list[dict[str, Any]]:
        """What the detectors find in the transactions committed in [since, until) (default: the
        last 24 hours), judged against the baseline window before ``since``; changes nothing."""
        self._require_installed()
        chosen = rules if isinstance(rules, Rules) else self.rules(rules)
        start = self._instant(since) or self._at("24 hours ago")
        end = self._instant(until) or self._at("now")
        return [f.record() for f in _watch.anomalies(self.conn, chosen, start, end)]

    def watch(
        self,
        rules: Rules | Path | str | None = None,
        *,
        once: bool = False,
        interval: float = 1.0,
        emit: Callable[[dict[str, Any]], None] | None = None,
        info: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Evaluate newly committed changes, store each finding as an alert and pass it to
        ``emit``; until ``stop`` is set, or once (``once``). Runs on a connection of its own,
        holding the one-watcher-per-database lock (WatcherBusy when another watcher runs).
        Returns the number of alerts stored."""
        self._require_installed()
        if interval <= 0:
            raise InvalidInput("--interval must be above 0 seconds")
        chosen = rules if isinstance(rules, Rules) else self.rules(rules)
        with connect(self.conninfo) as conn:
            if chosen.guards:
                from pgaudit_tool import guard as _guard

                _guard.apply_specs(conn, chosen)
            watcher = _watch.Watcher(
                conn,
                chosen,
                emit=(lambda f: emit(f.record())) if emit else (lambda _f: None),
                info=info or (lambda _m: None),
                stop=stop,
            )
            return watcher.run(once=once, interval=interval)

    def alerts(
        self,
        *,
        since: When | None = None,
        severity: str | None = None,
        rule: str | None = None,
        open_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored alerts, oldest first; ``severity``: that level and above."""
        self._require_installed()
        return _watch.alerts(
            self.conn, since=self._instant(since), severity=severity, rule=rule, open_only=open_only
        )

    def ack_alerts(self, ids: Sequence[int], by: str | None = None) -> list[int]:
        """Acknowledge alerts (recorded with who, default the login role, and when)."""
        self._require_installed()
        return _watch.ack(self.conn, ids, by)

    def tail(
        self,
        table: str | None = None,
        *,
        actor: str | None = None,
        db_user: str | None = None,
        last: int = 10,
        follow: bool = False,
        interval: float = 1.0,
        stop: threading.Event | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The last ``last`` committed changes, newest last; with ``follow``, every change as it
        commits, until ``stop`` is set."""
        self._require_installed()
        ref = None if table is None else resolve_table(self.conn, table)
        return _watch.tail(
            self.conn,
            table=ref,
            actor=actor,
            db_user=db_user,
            last=last,
            follow=follow,
            interval=interval,
            stop=stop,
        )

    # -- guards --------------------------------------------------------------------------------
    def guard(
        self,
        table: str,
        *,
        max_rows: int,
        ops: Sequence[str] = ("UPDATE", "DELETE"),
        except_roles: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Refuse, before it commits, any single statement changing more than ``max_rows`` rows
        of ``table`` (or of any of its partitions) for the operations ``ops`` (INSERT, UPDATE,
        DELETE; a guarded TRUNCATE is refused whole), unless the login role is a member of one
        of ``except_roles`` (exact role names). Sets or changes the guard; returns its
        :meth:`guard_list` record. Only the audit owner may (PermissionDenied). A refused
        statement raises SQLSTATE PGA01 (:class:`~pgaudit_tool.errors.GuardRefused` when
        translated). See :mod:`pgaudit_tool.guard`."""
        from pgaudit_tool import guard as _guard

        self._require_installed()
        return _guard.set_guard(
            self.conn, table, max_rows=max_rows, ops=ops, except_roles=except_roles
        )

    def guard_remove(self, table: str) -> bool:
        """Remove the guard of ``table``; False when it had none."""
        from pgaudit_tool import guard as _guard

        self._require_installed()
        return _guard.remove_guard(self.conn, table)

    def guard_list(self, table: str | None = None) -> list[dict[str, Any]]:
        """Every guard (or the guard of ``table``): table, ops, max_rows, except_roles, blocked
        (statements refused, a count that survives their rollback), state of its triggers, when
        and by whom it was set."""
        from pgaudit_tool import guard as _guard

        self._require_installed()
        return _guard.list_guards(self.conn, table)

    # -- measurement ---------------------------------------------------------------------------
    def bench(
        self, config: BenchConfig | None = None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Measure capture overhead on this database (see :mod:`pgaudit_tool.bench`)."""
        from pgaudit_tool.bench import BenchConfig, run_bench

        self._require_installed()
        return run_bench(self.conninfo, config or BenchConfig(), progress or (lambda _m: None))

    # -- attribution ---------------------------------------------------------------------------
    def actor(
        self, actor: str | None, context: Mapping[str, Any] | None = None
    ) -> AbstractContextManager[psycopg.Transaction]:
        """A transaction whose changes are attributed to ``actor`` (see :func:`audit_context`)."""
        return audit_context(self.conn, actor, context)

    # -- internals -----------------------------------------------------------------------------
    @property
    def conninfo(self) -> str:
        """A libpq conninfo for opening more connections to the same database."""
        if self._conninfo is None:
            self._conninfo = conninfo_of(self.conn)
        return self._conninfo

    def _instant(self, when: When | None) -> datetime | None:
        return None if when is None else self._at(when)

    def _at(self, when: When) -> datetime:
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise InvalidInput("a datetime without a time zone is ambiguous; give it a tzinfo")
            return when
        return instant(self.conn, when)

    def _require_installed(self) -> None:
        with translated_errors():
            schema.require_installed(self.conn)


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` raising AuditError (:func:`pgaudit_tool.db.translate`) for any psycopg error
    its call raises, wherever in the library it comes from (the server ending the connection,
    say). Listings translate the errors of their iteration themselves (``db.stream``)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    return call


# One exception base class for every public method: a psycopg error never escapes raw.
for _name, _member in list(vars(Audit).items()):
    if not _name.startswith("_") and inspect.isfunction(_member):
        setattr(Audit, _name, _translating(_member))
