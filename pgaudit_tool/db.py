"""Small database helpers shared by the library: error translation and name resolution."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from pgaudit_tool import jsonsafe
from pgaudit_tool.errors import (
    AuditError,
    DatabaseError,
    GuardRefused,
    InvalidInput,
    LockTimeout,
    PermissionDenied,
    TableNotSuitable,
)

# JSON numbers in row images are read as Decimal, so numeric values keep their exact digits;
# values nested too deeply for Python's recursive json module stay JSON text (jsonsafe.RawJson).
load_json = jsonsafe.loads

# Rows fetched per round trip by the server-side cursors of stream().
STREAM_ROWS = 2000

_BY_SQLSTATE: dict[str, type[AuditError]] = {
    "42501": PermissionDenied,  # insufficient_privilege
    "42P01": InvalidInput,  # undefined_table
    "42703": InvalidInput,  # undefined_column
    "42602": InvalidInput,  # invalid_name
    "42601": InvalidInput,  # syntax_error (in a name)
    "22023": InvalidInput,  # invalid_parameter_value
    "22P02": InvalidInput,  # invalid_text_representation
    "22007": InvalidInput,  # invalid_datetime_format
    "22008": InvalidInput,  # datetime_field_overflow
    "42809": TableNotSuitable,  # wrong_object_type
    "55000": TableNotSuitable,  # object_not_in_prerequisite_state
    "3F000": InvalidInput,  # invalid_schema_name
    "55P03": LockTimeout,  # lock_not_available
    "PGA01": GuardRefused,  # refused by a guard (audit.guard, sql/functions/09_guard.sql)
}

_LOCK_HINT = (
    "Another transaction holds a lock on what this command changes; retry when it has ended"
    " (pg_locks and pg_stat_activity show it), or wait longer with --lock-timeout (0: no limit)."
)


def conninfo_of(conn: psycopg.Connection[Any]) -> str:
    """A libpq conninfo that opens another session like ``conn``'s (its parameters and the
    password it used, which ``conn.info.dsn`` leaves out)."""
    return make_conninfo(conn.info.dsn, password=conn.info.password or None)


def translate(exc: psycopg.Error) -> AuditError:
    """Turn a psycopg error into the matching AuditError, keeping the server's sentence and hint."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    sqlstate = diag.sqlstate or ""
    cls = _BY_SQLSTATE.get(sqlstate, DatabaseError)
    if issubclass(cls, DatabaseError) and sqlstate:
        message = f"{message} (SQLSTATE {sqlstate})"
    if cls is LockTimeout:
        return cls(f"{message}; nothing was changed", hint=_LOCK_HINT)
    return cls(message, hint=diag.message_hint)


def jsonb(value: Any) -> Jsonb:
    """``value`` as a jsonb parameter, written as the output formats write JSON: exact decimals,
    RawJson verbatim (a key read back from the log may hold either)."""
    from pgaudit_tool.output import to_json_text

    return Jsonb(value, dumps=to_json_text)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise psycopg errors raised inside the block as AuditError subclasses."""
    try:
        yield
    except AuditError:
        raise
    except psycopg.Error as exc:
        raise translate(exc) from exc


#: How long a write transaction waits for a lock unless told otherwise: enable, disable,
#: refresh, install and revert lock what they change, and a lock request waiting behind a long
#: transaction makes every later query on that table wait behind it.
DEFAULT_LOCK_TIMEOUT = "5s"

# The lock_timeout chosen for each connection's write transactions (None: the session's own).
_LOCK_TIMEOUTS: weakref.WeakKeyDictionary[psycopg.Connection[Any], str | None] = (
    weakref.WeakKeyDictionary()
)


def choose_lock_timeout(conn: psycopg.Connection[Any], value: str | None) -> None:
    """Choose the lock_timeout of ``conn``'s write transactions: ``value`` (``"0"``: no limit),
    else :data:`DEFAULT_LOCK_TIMEOUT` unless the server, database, role or PGOPTIONS set one.

    Applied per transaction (``SET LOCAL``), never to the session, so that behind a transaction
    pooler it cannot leak into other clients' sessions. A bad value raises InvalidInput here.
    """
    # One round trip: whether lock_timeout is configured, and the value checked by setting it
    # for this statement's own transaction only (the connection is in autocommit mode).
    row = conn.execute(
        "SELECT source = 'default', set_config('lock_timeout', %s, true)"
        " FROM pg_settings WHERE name = 'lock_timeout'",
        (value or DEFAULT_LOCK_TIMEOUT,),
    ).fetchone()
    if value is None and row is not None and not row[0]:
        _LOCK_TIMEOUTS[conn] = None  # configured by the server, database, role or PGOPTIONS
    else:
        _LOCK_TIMEOUTS[conn] = value or DEFAULT_LOCK_TIMEOUT


def lock_timeout_of(conn: psycopg.Connection[Any]) -> str | None:
    """The lock_timeout chosen for ``conn``'s write transactions (None: the session's own). A
    connection made elsewhere (``Audit(psycopg.connect(...))``) gets the default of
    :func:`choose_lock_timeout` the first time it is asked."""
    if conn not in _LOCK_TIMEOUTS:
        with conn.transaction():
            row = conn.execute(
                "SELECT source = 'default' FROM pg_settings WHERE name = 'lock_timeout'"
            ).fetchone()
        _LOCK_TIMEOUTS[conn] = DEFAULT_LOCK_TIMEOUT if row is not None and row[0] else None
    return _LOCK_TIMEOUTS[conn]


# Connections on whose behalf this library may have committed a change (see may_have_changed).
_CHANGED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def note_change(conn: psycopg.Connection[Any]) -> None:
    """Record that a change made for ``conn``'s user is about to be committed (on ``conn`` or, as
    by ``install``, on a connection of its own): call it right before the COMMIT."""
    _CHANGED.add(conn)


def may_have_changed(conn: psycopg.Connection[Any]) -> bool:
    """Whether this library may have committed a change for ``conn``'s user: False means nothing
    was changed (the CLI says so when interrupted). True from right before a COMMIT on, so an
    interruption while committing, whose outcome is unknown, counts as a change."""
    return conn in _CHANGED


@contextmanager
def changing_transaction(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Transaction]:
    """``conn.transaction()`` for a transaction that changes the database: unless it is rolled
    back (an exception, ``psycopg.Rollback``) or nested in a caller's transaction, its commit is
    recorded (see :func:`may_have_changed`)."""
    with conn.transaction() as tx:
        yield tx
        if not tx.savepoint_name:  # not a savepoint: the commit follows
            note_change(conn)


@contextmanager
def write_transaction(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Transaction]:
    """:func:`changing_transaction` waiting for locks no longer than the connection's chosen
    lock_timeout (transaction-local)."""
    with changing_transaction(conn) as tx:
        timeout = lock_timeout_of(conn)
        if timeout is not None:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
        yield tx


@dataclass(frozen=True)
class TableRef:
    """A resolved table: its OID, its schema-qualified quoted name, and its name parts."""

    oid: int
    name: str
    schema: str = ""
    relname: str = ""

    @property
    def ident(self) -> sql.Identifier:
        """The table as a composable, safely quoted identifier."""
        return sql.Identifier(self.schema, self.relname)


# A relation's OID and its always schema-qualified name (regclass::text omits visible schemas).
_RESOLVE = (
    "SELECT c.oid, pg_catalog.format('%%I.%%I', n.nspname, c.relname), n.nspname, c.relname FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass(%s)"
)
_TABLE_NAMES = (
    "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition"
    " AND n.nspname NOT IN ('audit', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"
    " AND pg_catalog.format('%%I.%%I', n.nspname, c.relname) LIKE %s ORDER BY 1 LIMIT %s"
)
_SCHEMA_TABLES = (
    "SELECT c.oid, pg_catalog.format('%%I.%%I', n.nspname, c.relname), n.nspname, c.relname FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname"
)


def resolve_table(conn: psycopg.Connection[Any], name: str) -> TableRef:
    """Resolve a table name as PostgreSQL parses it (``sales.orders``, ``"Sales Dept"."Order Items"``).

    Raises InvalidInput for a malformed or unknown name.
    """
    if not name or not name.strip():
        raise InvalidInput("a table name is required")
    try:
        with conn.transaction():
            row = conn.execute(_RESOLVE, (name,)).fetchone()
    except (psycopg.ProgrammingError, psycopg.DataError) as exc:
        raise InvalidInput(
            f"{name!r} is not a valid table name: {exc.diag.message_primary}",
            hint='Quote names with spaces, capitals or punctuation: \'"Sales Dept"."Order Items"\'.',
        ) from exc
    if row is None or row[0] is None:
        raise InvalidInput(
            f"table {name} does not exist",
            hint="Names are case-folded unless double-quoted; check the schema with \\dt in psql.",
        )
    return TableRef(oid=int(row[0]), name=str(row[1]), schema=str(row[2]), relname=str(row[3]))


def schema_tables(conn: psycopg.Connection[Any], schema: str) -> list[TableRef]:
    """The ordinary and partitioned tables of a schema (partitions excluded), by name."""
    found = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if found is None:
        raise InvalidInput(f"schema {schema!r} does not exist")
    rows = conn.execute(_SCHEMA_TABLES, (schema,)).fetchall()
    return [TableRef(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def stream(
    conn: psycopg.Connection[Any], name: str, query: sql.Composable | str, params: Any = None
) -> Iterator[dict[str, Any]]:
    """Rows of ``query`` as dicts from a server-side cursor, as the server sends them.

    JSON values are parsed with exact decimals (:data:`load_json`); psycopg errors are
    translated. The cursor lives in a transaction (a savepoint inside one) until exhausted.
    """
    with (
        translated_errors(),
        conn.transaction(),
        conn.cursor(name, row_factory=dict_row) as cur,
    ):
        cur.itersize = STREAM_ROWS
        set_json_loads(load_json, cur)
        cur.execute(query, params)  # type: ignore[arg-type]
        yield from cur


def table_names(conn: psycopg.Connection[Any], prefix: str = "", limit: int = 500) -> list[str]:
    """Schema-qualified, quoted names of the tables a user may audit whose name starts with
    ``prefix`` (for shell completion), in order, at most ``limit``."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return [str(r[0]) for r in conn.execute(_TABLE_NAMES, (pattern, limit)).fetchall()]
