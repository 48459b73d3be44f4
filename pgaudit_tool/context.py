"""Name the application user behind database changes, one transaction at a time.

The capture triggers read two transaction-local settings, ``pgaudit.actor`` (text) and
``pgaudit.context`` (a JSON object). Both helpers here set them with
``set_config(..., is_local => true)``: they never outlive the transaction, so they are safe behind
PgBouncer in transaction mode, where a session setting would leak to other clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from pgaudit_tool.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

ACTOR_SETTING = "pgaudit.actor"
CONTEXT_SETTING = "pgaudit.context"
_SET_SQL = "SELECT set_config('pgaudit.actor', %s, true), set_config('pgaudit.context', %s, true)"
_GET_SQL = "SELECT current_setting('pgaudit.actor', true), current_setting('pgaudit.context', true)"
_INFO_KEY = "pgaudit_tool.actor"


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


def track_sessions(target: type[Session] | Session | sessionmaker[Any]) -> None:
    """Make every transaction of ``target`` carry the actor set with :func:`set_actor`.

    ``target`` is a Session, a Session subclass or a sessionmaker. The settings are written at
    the start of each transaction, transaction-local.
    """
    from sqlalchemy import event

    event.listen(target, "after_begin", _after_begin)


def _after_begin(
    session: Session, transaction: SessionTransaction, connection: SAConnection
) -> None:
    values = session.info.get(_INFO_KEY)
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
