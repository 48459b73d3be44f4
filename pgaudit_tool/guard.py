"""Guards: per-table limits on the rows one statement may change, enforced in the database.

A guard (``audit.guard()``, ``sql/functions/09_guard.sql``) makes any single statement that
inserts, updates or deletes more than ``max_rows`` rows of a table (or of any of its partitions,
also written directly), for the guarded operations, fail before it can commit, with SQLSTATE
:data:`GUARD_SQLSTATE`, unless the login role is a member of an excepted role. A guarded TRUNCATE
is refused whatever it removes. Each refusal is counted (``blocked``, a sequence: it survives the
rollback of the refused statement) and written to the server log as a LOG line starting with
:data:`LOG_PREFIX`. Only the owner of the audit schema sets or removes guards.

This module is the library behind :meth:`pgaudit_tool.Audit.guard`, ``guard_remove`` and
``guard_list`` and the ``pgaudit-tool guard`` command.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from pgaudit_tool.db import TableRef, resolve_table, translated_errors, write_transaction
from pgaudit_tool.errors import InvalidInput, PermissionDenied

#: The SQLSTATE of a statement refused by a guard (class "PG", private to pgaudit_tool).
GUARD_SQLSTATE = "PGA01"
#: How every server log line a guard writes starts.
LOG_PREFIX = "pgaudit_tool guard:"
#: The operations a guard can limit, in the order they are stored and shown.
OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
#: The operations guarded unless told otherwise.
DEFAULT_OPS = ("UPDATE", "DELETE")
#: The columns of ``guard --list``, in order.
GUARD_COLUMNS = (
    "table",
    "ops",
    "max_rows",
    "except_roles",
    "blocked",
    "state",
    "changed_at",
    "changed_by",
)


class GuardSpecLike(Protocol):
    """A guard to set: what a ``[[guard]]`` of a rules file holds."""

    @property
    def table(self) -> str: ...
    @property
    def max_rows(self) -> int: ...
    @property
    def ops(self) -> Sequence[str]: ...
    @property
    def except_roles(self) -> Sequence[str]: ...


class HasGuards(Protocol):
    """Anything carrying guards to set (the watcher's rules)."""

    @property
    def guards(self) -> Sequence[GuardSpecLike]: ...


def normalize_ops(ops: str | Iterable[str]) -> list[str]:
    """The operations of a guard, checked: ``"DELETE,update"`` or ``["DELETE", "UPDATE"]`` ->
    ``["UPDATE", "DELETE"]`` (upper case, no duplicates, in :data:`OPS` order).

    InvalidInput for an empty list or an unknown operation.
    """
    items = [ops] if isinstance(ops, str) else list(ops)
    wanted: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"unknown operation {item!r}: a guard limits {_or(OPS)}")
        for part in item.split(","):
            op = part.strip().upper()
            if op not in OPS:
                raise InvalidInput(
                    f"unknown operation {part.strip()!r}: a guard limits {_or(OPS)}",
                    hint="e.g. --ops DELETE,UPDATE",
                )
            wanted.add(op)
    if not wanted:
        raise InvalidInput(f"a guard needs at least one operation: {_or(OPS)}")
    return [op for op in OPS if op in wanted]


def check_max_rows(max_rows: object) -> int:
    """``max_rows`` as an int of at least 1 (InvalidInput otherwise)."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise InvalidInput(f"the limit must be a whole number of rows, not {max_rows!r}")
    if max_rows < 1:
        raise InvalidInput(
            f"the limit must be at least 1 row per statement, not {max_rows}",
            hint="To stop guarding the table, remove its guard (pgaudit-tool guard --remove TABLE).",
        )
    if max_rows > 2**63 - 1:
        raise InvalidInput(f"the limit {max_rows} is too large (at most {2**63 - 1})")
    return max_rows


def check_roles(roles: str | Iterable[str]) -> list[str]:
    """Excepted role names (exact names, as in ``pg_roles.rolname``), without duplicates.
    Their existence is checked by the database."""
    items = [roles] if isinstance(roles, str) else list(roles)
    result: list[str] = []
    for role in items:
        if not isinstance(role, str) or not role:
            raise InvalidInput(f"an excepted role needs a name, not {role!r}")
        if "\x00" in role:
            raise InvalidInput(f"role {role!r} does not exist")
        if role not in result:
            result.append(role)
    return result


def require_owner(conn: psycopg.Connection[Any]) -> None:
    """PermissionDenied unless the login role is a member of the audit owner role."""
    with translated_errors():
        row = conn.execute("SELECT audit._is_owner(), audit._owner()::text").fetchone()
    if row is None or not row[0]:
        owner = row[1] if row else "the owner of the audit schema"
        raise PermissionDenied(
            f"only the owner of the audit schema ({owner}) can set or remove guards",
            hint=f"Connect as {owner}, or as a role that is a member of it.",
        )


def set_guard(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    max_rows: int,
    ops: str | Iterable[str] = DEFAULT_OPS,
    except_roles: str | Iterable[str] = (),
) -> dict[str, Any]:
    """Set (or change) the guard of ``table``; returns its :func:`list_guards` record.

    Bad input (unknown table, limit below 1, unknown operation or role, a view, a partition)
    raises InvalidInput or TableNotSuitable and changes nothing.
    """
    limit = check_max_rows(max_rows)
    chosen_ops = normalize_ops(ops)
    roles = check_roles(except_roles)
    require_owner(conn)
    ref = resolve_table(conn, table)
    with write_transaction(conn), translated_errors():
        _set(conn, ref, limit, chosen_ops, roles)
    return _record_of(conn, ref)


def apply_specs(conn: psycopg.Connection[Any], rules: HasGuards) -> list[dict[str, Any]]:
    """Set every guard of ``rules`` (a rules file's ``[[guard]]`` entries), in one transaction:
    all or nothing. Returns their :func:`list_guards` records."""
    if not rules.guards:
        return []
    require_owner(conn)
    checked = []
    for spec in rules.guards:
        checked.append(
            (
                resolve_table(conn, spec.table),
                check_max_rows(spec.max_rows),
                normalize_ops(spec.ops),
                check_roles(spec.except_roles),
            )
        )
    with write_transaction(conn), translated_errors():
        for ref, limit, chosen_ops, roles in checked:
            _set(conn, ref, limit, chosen_ops, roles)
    return [_record_of(conn, ref) for ref, *_ in checked]


def remove_guard(conn: psycopg.Connection[Any], table: str) -> bool:
    """Remove the guard of ``table`` (its triggers, registry row and counter). False: it had none."""
    require_owner(conn)
    ref = resolve_table(conn, table)
    with write_transaction(conn), translated_errors():
        row = conn.execute("SELECT audit.guard_remove(%s::oid::regclass)", (ref.oid,)).fetchone()
    return bool(row and row[0])


def list_guards(conn: psycopg.Connection[Any], table: str | None = None) -> list[dict[str, Any]]:
    """Every guard (or the guard of ``table``), by table name: see ``audit.guard_list()``."""
    ref = None if table is None else resolve_table(conn, table)
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        if ref is None:
            cur.execute("SELECT * FROM audit.guard_list()")
        else:
            cur.execute("SELECT * FROM audit.guard_list() WHERE relid = %s", (ref.oid,))
        rows = cur.fetchall()
    for row in rows:
        row["table"] = row.pop("table_name")
    return rows


def describe(record: dict[str, Any]) -> str:
    """One sentence saying what a guard refuses."""
    ops = list(record["ops"])
    rowwise = [op for op in ops if op != "TRUNCATE"]
    parts = []
    if rowwise:
        parts.append(
            f"{_or(rowwise)} of more than {record['max_rows']} row(s) in one statement refused"
        )
    if "TRUNCATE" in ops:
        parts.append("TRUNCATE refused")
    roles = list(record["except_roles"])
    excepted = f", except for members of {', '.join(roles)}" if roles else ""
    return f"guard on {record['table']}: {'; '.join(parts)}{excepted}"


def _set(
    conn: psycopg.Connection[Any], ref: TableRef, limit: int, ops: list[str], roles: list[str]
) -> None:
    conn.execute(
        "SELECT audit.guard(%s::oid::regclass, %s, %s::text[], %s::text[])",
        (ref.oid, limit, ops, roles),
    )


def _record_of(conn: psycopg.Connection[Any], ref: TableRef) -> dict[str, Any]:
    with translated_errors(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM audit.guard_list() WHERE relid = %s", (ref.oid,)
        ).fetchone()
    if row is None:  # pragma: no cover - set in the same connection just before
        raise InvalidInput(f"table {ref.name} has no guard")
    row["table"] = row.pop("table_name")
    return row


def _or(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
