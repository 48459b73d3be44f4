"""Name the application user behind database changes, one transaction at a time.

The capture triggers read two transaction-local settings, ``pgaudit.actor`` (text) and
``pgaudit.context`` (a JSON object). Every helper here sets them with
``set_config(..., is_local => true)``: they never outlive the transaction, so they are safe behind
PgBouncer in transaction mode, where a session setting would leak to other clients.

For SQLAlchemy, :func:`track_sessions` writes them at the start of each transaction of a
session: the actor given to that session with :func:`set_actor`, else the one in force where the
transaction starts, set with :func:`acting_as` (a context variable: per thread, per asyncio
task; what a web middleware sets for its request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import psycopg

from pgaudit_tool.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session, SessionTransaction

ACTOR_SETTING = "pgaudit.actor"
CONTEXT_SETTING = "pgaudit.context"
_SET_SQL = "SELECT set_config('pgaudit.actor', %s, true), set_config('pgaudit.context', %s, true)"
_GET_SQL = "SELECT current_setting('pgaudit.actor', true), current_setting('pgaudit.context', true)"
_INFO_KEY = "pgaudit_tool.actor"
_TRACKED_MARK = "_pgaudit_tracked"
_ambient: ContextVar[tuple[str, str] | None] = ContextVar("pgaudit_tool_actor", default=None)


def _context_text(context: Mapping[str, Any] | None) -> str:
    if context is None:
        return ""
    if not isinstance(context, Mapping):
        raise InvalidInput("the audit context must be a mapping (a JSON object)")
    try:
        return json.dumps(dict(context), separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"the audit context cannot be written as JSON: {exc}") from exc


@contextmanager
def audit_context(
    conn: psycopg.Connection[Any], actor: str | None, context: Mapping[str, Any] | None = None
) -> Iterator[psycopg.Transaction]:
    """A transaction (or, inside one, a savepoint) whose changes are attributed to ``actor``.

    ``context`` is any JSON-serialisable mapping stored with the transaction. On leaving a nested
    block the previous values come back, so the attribution is exactly the block's.

        with audit_context(conn, "alice", {"ticket": "T-1"}):
            conn.execute("UPDATE sales.orders SET ...")
    """
    values = (actor or "", _context_text(context))
    with conn.transaction() as tx:
        previous = conn.execute(_GET_SQL).fetchone()
        conn.execute(_SET_SQL, values)
        yield tx
        # Leaving a nested block normally: give the enclosing transaction its actor back. (On an
        # error the savepoint's rollback restores the settings by itself.)
        if previous is not None and tx.savepoint_name:  # "" (psycopg 3.3) or None: the top level
            conn.execute(_SET_SQL, (previous[0] or "", previous[1] or ""))


def set_actor(
    session: Session, actor: str | None, context: Mapping[str, Any] | None = None
) -> None:
    """Attribute this SQLAlchemy Session's transactions to ``actor`` (with ``context``).

    Needs :func:`track_sessions` on the Session (or its class / sessionmaker). Applies to the
    transaction in progress, if any, and to every later one, until changed; ``actor=None`` clears.
    """
    values = (actor or "", _context_text(context))
    session.info[_INFO_KEY] = values
    if session.in_transaction():
        _apply(session.connection(), values)


@contextmanager
def acting_as(actor: str | None, context: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Inside the block, the transactions that sessions tracked by :func:`track_sessions` begin
    are attributed to ``actor`` (with ``context``), unless :func:`set_actor` named another for
    the session. Per thread and per asyncio task (a context variable); blocks nest.

        with acting_as("alice", {"request_id": "r-42"}):
            with Session() as session, session.begin():
                session.add(order)
    """
    token = _ambient.set((actor or "", _context_text(context)))
    try:
        yield
    finally:
        _ambient.reset(token)


def track_sessions(target: Any) -> None:
    """Make every transaction of ``target`` carry the actor of :func:`set_actor` (for that
    session) or :func:`acting_as` (where the transaction begins).

    ``target`` is a Session, a Session subclass or a sessionmaker, or for asyncio an
    AsyncSession or an async_sessionmaker (whose sessions then use a tracked subclass of its
    ``sync_session_class``). The settings are written at the start of each transaction,
    transaction-local.
    """
    from sqlalchemy import event

    owner = _listener_owner(target)
    # Marked on the owner itself, not looked up with event.contains: SQLAlchemy's event registry
    # is keyed by id(), so a sessionmaker created after another was garbage-collected can reuse
    # its id and look tracked while it is not (its sessions then wrote no actor).
    if getattr(owner, _TRACKED_MARK, False):
        return
    event.listen(owner, "after_begin", _after_begin)
    setattr(owner, _TRACKED_MARK, True)


def _listener_owner(target: Any) -> Any:
    """The Session or Session class whose ``after_begin`` event covers ``target``."""
    from sqlalchemy.orm import Session as SyncSession
    from sqlalchemy.orm import sessionmaker

    try:
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    except ImportError:  # pragma: no cover - SQLAlchemy without its asyncio extension
        AsyncSession = async_sessionmaker = None  # type: ignore[assignment,misc]
    if AsyncSession is not None and isinstance(target, AsyncSession):
        return target.sync_session
    if async_sessionmaker is not None and isinstance(target, async_sessionmaker):
        base = target.kw.get("sync_session_class") or SyncSession
        if not getattr(base, _TRACKED_MARK, False):
            # A subclass of its own, so that tracking never reaches other users of ``base``.
            base = type(f"Tracked{base.__name__}", (base,), {})
            target.kw["sync_session_class"] = base
        return base
    if isinstance(target, sessionmaker):
        return target.class_  # a subclass made for this sessionmaker alone
    return target


def _after_begin(
    session: Session, transaction: SessionTransaction, connection: SAConnection
) -> None:
    values = session.info.get(_INFO_KEY) or _ambient.get()
    if values is not None:
        _apply(connection, values)


def _apply(connection: SAConnection, values: tuple[str, str]) -> None:
    from sqlalchemy import text

    connection.execute(
        text(
            "SELECT set_config('pgaudit.actor', :a, true), set_config('pgaudit.context', :c, true)"
        ),
        {"a": values[0], "c": values[1]},
    )
