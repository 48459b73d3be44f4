"""How Django's writes carry their actor and context to the capture triggers.

The triggers read the transaction-local settings ``pgaudit.actor`` and ``pgaudit.context``. The
values in force are kept in a :class:`contextvars.ContextVar` (set by the middleware for a request
and by :func:`context` anywhere), and an execute wrapper, installed on every PostgreSQL connection
when it is opened, attaches them to **each write statement's own transaction**:

* with psycopg 3's default client-side binding (and psycopg2), the statement is sent as
  ``SELECT set_config('pgaudit.actor', ..., true), set_config('pgaudit.context', ..., true);
  <statement>`` in one simple-protocol query. PostgreSQL runs a multi-statement query as one
  implicit transaction, so in autocommit mode the settings live exactly as long as the statement's
  transaction; inside ``atomic()`` (or ``ATOMIC_REQUESTS``) they are local to the open
  transaction. One round trip, as before;
* otherwise (``server_side_binding``, ``executemany``) a separate ``set_config(..., true)`` runs on
  the same cursor first, inside the open transaction, or in autocommit inside a short
  ``atomic()`` wrapping the two statements.

Nothing is ever set at session level, so nothing can survive the transaction: not on a connection
Django reuses for the next request (``CONN_MAX_AGE``), not on a server connection PgBouncer in
transaction mode hands to another client. Statements that cannot change data are left as they
are: ``SELECT`` (unless ``PGAUDIT_ATTRIBUTE_SELECTS``), DDL, ``SET``, transaction control,
``VACUUM`` and the like (some cannot run in a transaction block), ``CALL`` (a procedure that
commits cannot run in one) and named (server-side) cursors, which Django uses to read.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pgaudit_tool.context import _context_text

#: First words of the statements the settings are attached to (SELECT is optional).
_WRITES = frozenset({"insert", "update", "delete", "merge", "with", "truncate", "do"})
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]+)", re.DOTALL)
_SET_SQL = "SELECT set_config('pgaudit.actor', %s, true), set_config('pgaudit.context', %s, true)"


class _Unset:
    def __repr__(self) -> str:
        return "<inherited>"


INHERIT: Any = _Unset()


@dataclass
class Attribution:
    """The actor and context in force: what :func:`current` returns.

    ``actor`` is resolved lazily (the middleware's looks at ``request.user`` when a write is
    made, so a login or logout inside the request is followed).
    """

    resolve_actor: Callable[[], str | None]
    context: Mapping[str, Any]
    context_json: str = field(init=False)

    def __post_init__(self) -> None:
        self.context_json = _context_text(self.context) if self.context else ""

    @property
    def actor(self) -> str | None:
        return self.resolve_actor()


_current: ContextVar[Attribution | None] = ContextVar("pgaudit_attribution", default=None)
_resolving: ContextVar[bool] = ContextVar("pgaudit_resolving", default=False)


def current() -> Attribution | None:
    """The attribution in force here (None outside any request or :func:`context`)."""
    return _current.get()


@contextmanager
def context(actor: str | None = INHERIT, **values: Any) -> Iterator[Attribution]:
    """Attribute the writes made inside the block: to ``actor`` (default: the enclosing
    request's or block's actor; ``None``: nobody), with ``values`` added to the context.

    Usable as a decorator, in management commands, background tasks and views alike. The values
    must be JSON-serialisable (others are written with ``str``). Like the capture triggers, it
    attributes whole transactions: a transaction's actor and context are those in force at its
    first audited change, so enter the block before the ``atomic()`` whose writes it names.
    """
    require_app()
    parent = _current.get()
    if actor is INHERIT:
        resolve = parent.resolve_actor if parent is not None else _nobody
    else:
        resolve = _fixed(None if actor is None else str(actor))
    merged = {**(parent.context if parent is not None else {}), **values}
    with attributed(resolve, merged) as scope:
        yield scope


@contextmanager
def attributed(
    resolve_actor: Callable[[], str | None], values: Mapping[str, Any]
) -> Iterator[Attribution]:
    """Put exactly this attribution in force inside the block (nothing inherited)."""
    scope = Attribution(resolve_actor, values)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def require_app() -> None:
    """Refuse to attribute anything when the app, which installs the execute wrapper on each
    connection, is missing: the writes would silently go unattributed."""
    from django.apps import apps

    if not apps.is_installed("pgaudit_tool.contrib.django"):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "add 'pgaudit_tool.contrib.django' to INSTALLED_APPS: it attaches the actor to "
            "each connection's statements (without it nothing is attributed)"
        )


def _nobody() -> None:
    return None


def _fixed(actor: str | None) -> Callable[[], str | None]:
    return lambda: actor


def install_on(sender: Any = None, connection: Any = None, **_: Any) -> None:
    """Put the wrapper on ``connection`` (a Django DatabaseWrapper), once; the
    ``connection_created`` receiver. Only PostgreSQL connections of the aliases in
    ``PGAUDIT_DATABASES`` (default: all)."""
    if connection is None or connection.vendor != "postgresql":
        return
    from django.conf import settings

    aliases = getattr(settings, "PGAUDIT_DATABASES", None)
    if aliases is not None and connection.alias not in aliases:
        return
    if _attach not in connection.execute_wrappers:
        # First in the list, so outermost, and out of the way of the pop() of a user's
        # ``with connection.execute_wrapper(...)`` entered before the connection opened.
        connection.execute_wrappers.insert(0, _attach)


def _attributable(sql: str, selects: bool) -> bool:
    match = _FIRST_WORD.match(sql)
    if match is None:
        return False
    word = match.group(1).lower()
    return word in _WRITES or (selects and word == "select")


def _literal(value: str) -> str:
    """A string constant that reads the same whatever standard_conforming_strings is (values
    come through :func:`_text`, without NUL characters)."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _attach(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """The execute wrapper (see the module's docstring)."""
    scope = _current.get()
    if scope is None or _resolving.get():
        return execute(sql, params, many, context)
    if isinstance(sql, bytes):
        sql = sql.decode()
    from django.conf import settings

    cursor = context["cursor"].cursor
    if (
        not isinstance(sql, str)
        or not _attributable(sql, bool(getattr(settings, "PGAUDIT_ATTRIBUTE_SELECTS", False)))
        or getattr(cursor, "name", None)  # a named (server-side) cursor: DECLARE ... FOR
    ):
        return execute(sql, params, many, context)
    token = _resolving.set(True)  # resolving the actor may read the database (request.user)
    try:
        actor = scope.actor
    finally:
        _resolving.reset(token)
    values = (_text(actor or ""), _text(scope.context_json))
    binding = _client_binding(cursor)
    if not many and binding:
        prefix = (
            f"SELECT set_config('pgaudit.actor', {_literal(values[0])}, true),"
            f" set_config('pgaudit.context', {_literal(values[1])}, true); "
        )
        if params is not None:  # the driver interpolates %: keep ours literal
            prefix = prefix.replace("%", "%%")
        result = execute(prefix + sql, params, many, context)
        if binding == "psycopg":  # psycopg 3 shows the first result, psycopg2 the last
            cursor.nextset()
        return result
    connection = context["connection"]
    if not connection.get_autocommit():
        cursor.execute(_SET_SQL, values)
        return execute(sql, params, many, context)
    from django.db import transaction

    with transaction.atomic(using=connection.alias):
        cursor.execute(_SET_SQL, values)
        return execute(sql, params, many, context)


def _text(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL


def _client_binding(cursor: Any) -> str | None:
    """The driver, for cursors that send one simple-protocol query (several statements
    allowed): psycopg 3's ClientCursor (Django's default) or any psycopg2 cursor."""
    import psycopg

    if isinstance(cursor, psycopg.ClientCursor):
        return "psycopg"
    psycopg2 = sys.modules.get("psycopg2.extensions")
    if psycopg2 is not None and isinstance(cursor, psycopg2.cursor):
        return "psycopg2"
    return None
