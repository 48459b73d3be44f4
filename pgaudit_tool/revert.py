"""Revert recorded changes: a thin layer over the SQL of ``sql/functions/05_revert.sql``.

The server does the work. ``audit.revert_script(selection, on_conflict, actor, fire_triggers)``
returns the statements of a revert in order; they build a temporary plan table
(``pg_temp.pgaudit_revert_plan``, one row per affected row: action, conflict, later changes),
switch the application triggers of the tables off (unless ``fire_triggers``), apply the plan
table by table in foreign-key order and switch the triggers back. :func:`run` executes those very statements
in one transaction (the plan first, so that the summary and the conflicts can be shown and a
confirmation asked before any data changes), and renders them as the script ``--dry-run``
prints: run in psql, that script does the same thing.

What to undo is a :class:`RevertSelection`: the JSON object of ``audit.revert_selection``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from pgaudit_tool.db import load_json, translate, write_transaction
from pgaudit_tool.errors import AuditError, InvalidInput, RevertConflict

ON_CONFLICT = ("abort", "skip", "force")
DEFAULT_ACTOR = "pgaudit-tool revert"
SUMMARY_COLUMNS = ("table", "action", "rows", "conflicts")
APPLIED_COLUMNS = ("table", "action", "rows")
CONFLICT_COLUMNS = ("table", "pk", "reason", "columns", "changed_later_by", "revert")
DML = ("DELETE", "UPDATE", "INSERT")

#: Called before each data statement with the rows done so far, the rows in all and what runs
#: next (``"DELETE public.t"``), and once at the end (``"done"``).
Progress = Callable[[int, int, str], None]
#: Shown the plan before any data changes; returns whether to go ahead.
Confirm = Callable[["RevertResult"], bool]

# SQLSTATEs raised by the revert functions: conflicts under "abort", rows changed meanwhile.
_CONFLICT_STATES = ("RV001", "40001")

_SUMMARY_SQL = """
SELECT s."table", s.action, count(*) AS rows, count(*) FILTER (WHERE s.conflict) AS conflicts
  FROM (SELECT p.table_name AS "table", p.conflict,
               CASE WHEN p.apply THEN p.action WHEN p.conflict THEN 'CONFLICT' ELSE 'NONE' END AS action
          FROM pg_temp.pgaudit_revert_plan AS p) AS s
 GROUP BY 1, 2
 ORDER BY 1, pg_catalog.array_position('{DELETE,UPDATE,INSERT,CONFLICT,NONE}'::text[], s.action)
"""
_CONFLICTS_SQL = """
SELECT p.table_name AS "table", p.pk, p.reason, p.conflict_columns AS columns, p.live,
       p.expected, p.target, coalesce(p.later, '[]'::jsonb) AS later,
       CASE WHEN p.apply THEN p.action ELSE 'left as is' END AS revert
  FROM pg_temp.pgaudit_revert_plan AS p
 WHERE p.conflict
 ORDER BY p.table_name, p.pk
"""


@dataclass(frozen=True)
class Step:
    """One statement of a revert script. ``kind``: begin, setup, select, plan, guard, label,
    suppress (a trigger of ``table`` switched off; ``action`` is its name), DELETE/UPDATE/INSERT
    (with its ``table``), check, restore (a trigger switched back), cleanup, commit."""

    kind: str
    statement: str
    table: str | None = None
    action: str | None = None

    @property
    def is_data(self) -> bool:
        return self.kind in DML


@dataclass(frozen=True)
class RevertSelection:
    """What a revert undoes: one kind of selection, as ``audit.revert_selection`` takes it.

    ``changes`` (change ids); ``txids``; ``actor`` and/or ``db_user`` with ``since`` (and
    ``until``): the transactions that committed after ``since`` and at or before ``until``;
    ``table`` (a qualified name) with ``to`` (and ``pk``, a dict or a bare value): the table
    (or row) back to its state at ``to``. The server validates the combination.
    """

    changes: tuple[int, ...] | None = None
    txids: tuple[int, ...] | None = None
    actor: str | None = None
    db_user: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    table: str | None = None
    pk: Any = None
    to: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON object of the SQL API: the criteria given, times in ISO 8601."""
        chosen = {
            "changes": None if self.changes is None else [int(c) for c in self.changes],
            "txids": None if self.txids is None else [int(t) for t in self.txids],
            "actor": self.actor,
            "db_user": self.db_user,
            "since": self.since,
            "until": self.until,
            "table": self.table,
            "pk": self.pk,
            "to": self.to,
        }
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in chosen.items()
            if value is not None
        }


@dataclass
class RevertResult:
    """What a revert did, or would do (``dry_run``).

    ``summary``: rows per table and action (``CONFLICT``: left as they are; ``NONE``: already
    as they should be). ``conflicts``: rows changed after the changes to revert, with the later
    changes (``later``). ``applied``: rows deleted, updated and inserted per table (empty for a
    dry run or a cancelled one). ``txid``: the revert's own transaction, None if it changed
    nothing. ``sql``: the whole script, runnable in psql. ``suppressed_triggers``: the
    application triggers switched off while the revert writes (``table``, ``trigger``); empty
    with ``fire_triggers``.
    """

    selection: RevertSelection
    on_conflict: str
    dry_run: bool
    sql: str
    changes: int
    summary: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]
    applied: list[dict[str, Any]] = field(default_factory=list)
    txid: int | None = None
    suppressed_triggers: list[dict[str, str]] = field(default_factory=list)

    @property
    def planned_rows(self) -> int:
        """Rows the revert deletes, updates or inserts."""
        return sum(int(s["rows"]) for s in self.summary if s["action"] in DML)

    @property
    def applied_rows(self) -> int:
        return sum(int(a["rows"]) for a in self.applied)

    def as_json(self) -> dict[str, Any]:
        """The result as one JSON-ready object (the CLI's ``--format json``)."""
        return {
            "selection": self.selection.as_json(),
            "on_conflict": self.on_conflict,
            "dry_run": self.dry_run,
            "changes": self.changes,
            "summary": self.summary,
            "conflicts": self.conflicts,
            "applied": self.applied,
            "txid": self.txid,
            "suppressed_triggers": self.suppressed_triggers,
            "sql": self.sql,
        }


# --------------------------------------------------------------------------- the script


def script_steps(
    conn: psycopg.Connection[Any],
    chosen: RevertSelection,
    on_conflict: str,
    actor: str,
    fire_triggers: bool = False,
) -> list[Step]:
    """The statements of the revert, in order, as ``audit.revert_script`` writes them."""
    rows = conn.execute(
        "SELECT kind, table_name, action, statement"
        " FROM audit.revert_script(%s, %s, %s, %s) ORDER BY step",
        (Jsonb(chosen.as_json()), on_conflict, actor, fire_triggers),
    ).fetchall()
    return [Step(kind=str(r[0]), table=r[1], action=r[2], statement=str(r[3])) for r in rows]


def render_script(steps: Sequence[Step], header: str = "") -> str:
    """The statements as one script, each ended by ``;``, after ``header`` as SQL comments."""
    lines = [f"-- {line}".rstrip() for line in header.splitlines()]
    body = [f"{step.statement};" for step in steps]
    return "\n".join([*lines, *body]) + "\n"


def describe(result: RevertResult, fire_triggers: str = "fire_triggers=True") -> str:
    """A human summary: what is selected, rows per table and action, conflicts, the triggers
    switched off (``fire_triggers``: how the caller's interface spells the way out)."""
    from pgaudit_tool.output import render

    out = io.StringIO()
    out.write(
        f"revert of {result.changes} change(s) selected by"
        f" {json.dumps(result.selection.as_json())}, on conflict: {result.on_conflict}\n"
    )
    if result.summary:
        render(result.summary, "table", out, SUMMARY_COLUMNS)
    else:
        out.write("nothing to revert\n")
    if result.conflicts:
        out.write(f"conflicts ({len(result.conflicts)} row(s) changed later):\n")
        render(result.conflicts, "table", out, CONFLICT_COLUMNS)
    if result.suppressed_triggers:
        names = "; ".join(
            f"{t['table']}.{_display_name(t['trigger'])}" for t in result.suppressed_triggers
        )
        out.write(
            f"application triggers switched off while the revert writes ({fire_triggers} lets"
            f" them fire): {names}\n"
        )
    return out.getvalue()


def _display_name(name: str) -> str:
    """A name as SQL would need it written: double-quoted unless a plain lower-case word."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- running


def run(
    conn: psycopg.Connection[Any],
    chosen: RevertSelection,
    *,
    on_conflict: str = "abort",
    actor: str = DEFAULT_ACTOR,
    fire_triggers: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
    progress: Progress | None = None,
) -> RevertResult:
    """Plan and (unless ``dry_run``, or ``confirm`` declines) apply a revert, in one transaction.

    Raises :class:`RevertConflict` when ``on_conflict`` is abort and rows conflict (nothing is
    changed; ``.conflicts`` lists them), InvalidInput for a bad selection, and any other error
    of the revert as an AuditError whose message says that nothing was changed.
    """
    if on_conflict not in ON_CONFLICT:
        raise InvalidInput(
            f"unknown conflict policy {on_conflict!r}", hint=f"Use one of {', '.join(ON_CONFLICT)}."
        )
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InvalidInput(
            "a revert runs in a transaction of its own, and this connection is inside one",
            hint="Commit or roll back first.",
        )
    applying = False
    with _revert_errors(lambda: applying):
        with write_transaction(conn) as tx:
            steps = script_steps(conn, chosen, on_conflict, actor, fire_triggers)
            result = _plan(conn, steps, chosen, on_conflict, dry_run, progress)
            if dry_run:
                raise psycopg.Rollback(tx)
            if on_conflict == "abort" and result.conflicts:
                raise _conflict_error(result)
            if confirm is not None and not confirm(result):
                raise psycopg.Rollback(tx)
            applying = True
            _apply(conn, steps, result, progress)
        return result


def _split(steps: Sequence[Step]) -> tuple[list[Step], list[Step]]:
    """The steps up to the plan table, and the rest (guard, label, data, cleanup, commit)."""
    for n, step in enumerate(steps):
        if step.kind in ("guard", "label") or step.is_data:
            return list(steps[:n]), list(steps[n:])
    return list(steps), []


def _plan(
    conn: psycopg.Connection[Any],
    steps: Sequence[Step],
    chosen: RevertSelection,
    on_conflict: str,
    dry_run: bool,
    progress: Progress | None = None,
) -> RevertResult:
    """Run the steps up to the plan table (reported to ``progress`` as ``planning: KIND``,
    counted in steps); read the summary and the conflicts."""
    planning = [step for step in _split(steps)[0] if step.kind != "begin"]
    for n, step in enumerate(planning):
        if progress is not None:
            progress(n, len(planning), f"planning: {step.kind}")
        conn.execute(step.statement)
    if progress is not None:
        progress(len(planning), len(planning), "planning: done")
    with conn.cursor(row_factory=dict_row) as cur:
        set_json_loads(load_json, cur)
        changes = cur.execute("SELECT count(*) AS n FROM pg_temp.pgaudit_revert_changes").fetchone()
        summary = cur.execute(_SUMMARY_SQL).fetchall()
        conflicts = [_conflict_record(r) for r in cur.execute(_CONFLICTS_SQL).fetchall()]
    result = RevertResult(
        selection=chosen,
        on_conflict=on_conflict,
        dry_run=dry_run,
        sql="",
        changes=int(changes["n"]) if changes else 0,
        summary=[{**s, "rows": int(s["rows"]), "conflicts": int(s["conflicts"])} for s in summary],
        conflicts=conflicts,
        suppressed_triggers=[
            {"table": str(step.table), "trigger": str(step.action)}
            for step in steps
            if step.kind == "suppress"
        ],
    )
    result.sql = render_script(steps, _script_header(result))
    return result


def _apply(
    conn: psycopg.Connection[Any],
    steps: Sequence[Step],
    result: RevertResult,
    progress: Progress | None,
) -> None:
    """Run the rest of the script: the guard, the label, the data statements, the cleanup."""
    total = result.planned_rows
    done = 0
    for step in _split(steps)[1]:
        if step.kind == "commit":
            continue
        if step.is_data and progress is not None:
            progress(done, total, f"{step.kind} {step.table}")
        cur = conn.execute(step.statement)
        row = cur.fetchone() if step.is_data else None
        rows = int(row[0]) if row is not None and row[0] is not None else 0
        if rows:
            done += rows
            result.applied.append({"table": step.table, "action": step.kind, "rows": rows})
    if progress is not None:
        progress(done, total, "done")
    found = conn.execute(
        "SELECT txid::text FROM audit.transaction WHERE txid = pg_catalog.pg_current_xact_id_if_assigned()"
    ).fetchone()
    result.txid = int(found[0]) if found is not None else None


def _conflict_record(row: dict[str, Any]) -> dict[str, Any]:
    later = list(row["later"] or [])
    row["changed_later_by"] = "; ".join(
        f"{c.get('actor') or '-'} (login {c.get('db_user')}) {c.get('op')} at {c.get('at')},"
        f" change {c.get('change')}, txid {c.get('txid')}"
        for c in later
    )
    row["later"] = later
    return row


def _script_header(result: RevertResult) -> str:
    summary = describe(result, "p_fire_triggers => true")
    return (
        "pgaudit_tool revert script. Run it as is: psql -v ON_ERROR_STOP=1 -f FILE\n"
        "It re-plans from the data at the time it runs; any error rolls everything back.\n"
        f"Plan when written:\n{summary}"
    )


def _conflict_error(result: RevertResult) -> RevertConflict:
    first = "; ".join(
        f"{c['table']} {json.dumps(c['pk'], default=str)}" for c in result.conflicts[:5]
    )
    more = len(result.conflicts) - 5
    return RevertConflict(
        f"{len(result.conflicts)} row(s) were changed after the changes to revert, and reverting "
        f"would overwrite that later work; nothing was changed: {first}"
        + (f"; and {more} more" if more > 0 else ""),
        hint='See them in a dry run ("dry_run"); then "on_conflict" skip leaves them as they'
        " are, force overwrites them.",
        conflicts=result.conflicts,
    )


@contextmanager
def _revert_errors(applying: Callable[[], bool]) -> Iterator[None]:
    """Errors as AuditError; conflicts as RevertConflict; failures while applying say that
    everything was rolled back."""
    try:
        yield
    except AuditError:
        raise
    except psycopg.Error as exc:
        if exc.diag.sqlstate in _CONFLICT_STATES:
            raise RevertConflict(
                exc.diag.message_primary or str(exc), hint=exc.diag.message_hint
            ) from exc
        error = translate(exc)
        if applying():
            error.message = f"the revert failed and changed nothing: {error.message}"
        raise error from exc
