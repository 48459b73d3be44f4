"""Attribution helpers: audit_context (psycopg), set_actor/track_sessions (SQLAlchemy), SQL API.

Every check reads what the capture triggers recorded in ``audit.transaction`` (actor, context),
so the helpers are proven end to end, not only by the settings they write.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from pgaudit_tool import Audit, audit_context, set_actor, track_sessions
from pgaudit_tool.connection import sqlalchemy_engine
from pgaudit_tool.errors import InvalidInput

_SETTINGS = (
    "SELECT current_setting('pgaudit.actor', true), current_setting('pgaudit.context', true)"
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def items(audit: Audit) -> Audit:
    """The audit schema installed and ``public.items`` audited."""
    audit.conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    audit.enable("items")
    return audit


def _insert(conn: psycopg.Connection[Any], item_id: int) -> int:
    """Insert a row into items and return the txid of the current transaction."""
    conn.execute("INSERT INTO items VALUES (%s, 'x')", (item_id,))
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def _sa_insert(session: Session, item_id: int) -> int:
    session.execute(text("INSERT INTO items VALUES (:i, 'x')"), {"i": item_id})
    return int(session.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())


def _attribution(conn: psycopg.Connection[Any], txid: int) -> tuple[str | None, Any]:
    """(actor, context) recorded for a transaction."""
    row = conn.execute(
        "SELECT actor, context FROM audit.transaction WHERE txid = %s::text::xid8", (str(txid),)
    ).fetchone()
    assert row is not None, f"no audit.transaction row for txid {txid}"
    return row[0], row[1]


def _actor_of_item(conn: psycopg.Connection[Any], item_id: int) -> tuple[str | None, Any]:
    """(actor, context) of the INSERT of one row of items, from audit.history."""
    row = conn.execute(
        "SELECT actor, context FROM audit.history WHERE table_name = 'public.items'"
        " AND op = 'INSERT' AND pk = jsonb_build_object('id', %s::int)",
        (item_id,),
    ).fetchone()
    assert row is not None, f"no INSERT captured for item {item_id}"
    return row[0], row[1]


def _settings(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    row = conn.execute(_SETTINGS).fetchone()
    assert row is not None
    return row[0] or "", row[1] or ""


# --------------------------------------------------------------------------- audit_context


def test_audit_context_attributes_the_block_only(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    with audit_context(conn, "alice", {"ticket": "T-1"}):
        assert _settings(conn) == ("alice", '{"ticket":"T-1"}')
        inside = _insert(conn, 1)
    # Autocommit connection: the next statement is its own transaction, with nothing set.
    assert _settings(conn) == ("", "")
    conn.execute("INSERT INTO items VALUES (2, 'y')")
    with conn.transaction():
        after = _insert(conn, 3)
    assert _settings(conn) == ("", "")

    assert _attribution(conn, inside) == ("alice", {"ticket": "T-1"})
    assert _actor_of_item(conn, 2) == (None, None)
    assert _attribution(conn, after) == (None, None)


def test_the_actor_holds_until_commit(items: Audit, conn: psycopg.Connection[Any]) -> None:
    """A top-level audit_context keeps its actor to the COMMIT: deferred triggers (an
    application's, run at COMMIT) still see who is acting. (psycopg 3.3 names the top-level
    transaction's savepoint "", which a check for None took for a nested block.)"""
    conn.execute(
        "CREATE TABLE seen (actor text);"
        "CREATE FUNCTION note_actor() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO seen VALUES (current_setting('pgaudit.actor', true)); RETURN NULL; END $$;"
        "CREATE CONSTRAINT TRIGGER note_actor AFTER INSERT ON items DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION note_actor()"
    )
    with audit_context(conn, "alice"):
        _insert(conn, 1)
    assert conn.execute("SELECT actor FROM seen").fetchall() == [("alice",)]


def test_audit_context_without_context_and_without_actor(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    with audit_context(conn, "dave"):
        plain = _insert(conn, 1)
    with audit_context(conn, None, {"job": "nightly"}):
        anonymous = _insert(conn, 2)
    assert _attribution(conn, plain) == ("dave", None)
    assert _attribution(conn, anonymous) == (None, {"job": "nightly"})


def test_nested_audit_context_restores_the_outer_actor(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    with audit_context(conn, "alice", {"ticket": "T-1"}):
        outer = _insert(conn, 1)
        with audit_context(conn, "bob", {"ticket": "T-2"}) as savepoint:
            assert savepoint.savepoint_name is not None  # really a savepoint
            assert _settings(conn) == ("bob", '{"ticket":"T-2"}')
            assert _insert(conn, 2) == outer  # same transaction
        assert _settings(conn) == ("alice", '{"ticket":"T-1"}')
        conn.execute("INSERT INTO items VALUES (3, 'z')")
    assert _settings(conn) == ("", "")
    # One transaction, one audit.transaction row: the attribution of its first audited change.
    assert _attribution(conn, outer) == ("alice", {"ticket": "T-1"})
    assert conn.execute("SELECT count(*) FROM audit.transaction").fetchone() == (1,)


def test_nested_audit_context_after_python_error_restores_outer(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    with audit_context(conn, "alice"):
        with pytest.raises(RuntimeError), audit_context(conn, "bob"):
            conn.execute("INSERT INTO items VALUES (1, 'rolled back')")
            raise RuntimeError("boom")
        assert _settings(conn)[0] == "alice"
        txid = _insert(conn, 2)
    assert _attribution(conn, txid) == ("alice", None)
    assert conn.execute("SELECT array_agg(id) FROM items").fetchone() == ([2],)


def test_nested_audit_context_sql_error_propagates_and_outer_survives(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    """An SQL error inside a nested block must surface as itself, not as a follow-up error."""
    conn.execute("INSERT INTO items VALUES (1, 'existing')")
    with audit_context(conn, "alice"):
        with pytest.raises(psycopg.errors.UniqueViolation), audit_context(conn, "bob"):
            conn.execute("INSERT INTO items VALUES (1, 'duplicate')")
        # The savepoint was rolled back: the outer transaction goes on as alice.
        assert _settings(conn)[0] == "alice"
        txid = _insert(conn, 2)
    assert _attribution(conn, txid) == ("alice", None)


def test_audit_context_rejects_a_context_that_is_not_a_mapping(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    for bad in (["ticket", "T-1"], "ticket=T-1", 7):
        with pytest.raises(InvalidInput), audit_context(conn, "alice", bad):  # type: ignore[arg-type]
            pytest.fail("the block must not run")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_audit_context_non_string_key_is_rejected(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(InvalidInput), audit_context(conn, "alice", {(1, 2): "tuple key"}):
        pytest.fail("the block must not run")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# --------------------------------------------------------------------------- SQLAlchemy


@pytest.fixture
def engine(items: Audit, dsn: str) -> Iterator[sqlalchemy.Engine]:
    eng = sqlalchemy_engine(dsn)
    try:
        yield eng
    finally:
        eng.dispose()


def test_set_actor_applies_to_every_transaction_of_the_session(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    factory = sessionmaker(engine)
    track_sessions(factory)
    with factory() as session:
        set_actor(session, "bob", {"ticket": "T-9"})
        first = _sa_insert(session, 1)
        session.commit()
        second = _sa_insert(session, 2)  # a new transaction, autobegun
        session.commit()
        set_actor(session, None)
        cleared = _sa_insert(session, 3)
        session.commit()
    assert first != second != cleared
    assert _attribution(conn, first) == ("bob", {"ticket": "T-9"})
    assert _attribution(conn, second) == ("bob", {"ticket": "T-9"})
    assert _attribution(conn, cleared) == (None, None)


def test_set_actor_inside_a_transaction_applies_at_once(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    factory = sessionmaker(engine)
    track_sessions(factory)
    with factory() as session:
        session.execute(text("SELECT 1"))  # transaction already begun
        set_actor(session, "erin", {"via": "admin"})
        txid = _sa_insert(session, 1)
        session.commit()
    assert _attribution(conn, txid) == ("erin", {"via": "admin"})


def test_set_actor_without_track_sessions_in_later_transactions(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    """Untracked sessions get nothing in later transactions: track_sessions is what applies it."""
    factory = sessionmaker(engine)
    with factory() as session:
        set_actor(session, "frank")
        txid = _sa_insert(session, 1)
        session.commit()
    assert _attribution(conn, txid) == (None, None)


def test_interleaved_sessions_keep_their_own_actor(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    factory = sessionmaker(engine)
    track_sessions(factory)
    with factory() as s1, factory() as s2:
        set_actor(s1, "bob", {"n": 1})
        set_actor(s2, "carol", {"n": 2})
        t1 = _sa_insert(s1, 1)
        t2 = _sa_insert(s2, 2)
        _sa_insert(s1, 3)
        s2.commit()
        t3 = _sa_insert(s2, 4)
        s1.commit()
        s2.commit()
    assert len({t1, t2, t3}) == 3
    assert _attribution(conn, t1) == ("bob", {"n": 1})
    assert _attribution(conn, t2) == ("carol", {"n": 2})
    assert _attribution(conn, t3) == ("carol", {"n": 2})
    assert _actor_of_item(conn, 3) == ("bob", {"n": 1})


def test_every_new_sessionmaker_is_tracked(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    """A sessionmaker made after another was garbage-collected may get its id(): it must be
    tracked all the same (SQLAlchemy's event registry, keyed by id, once said it was)."""
    txids = []
    for n in range(1, 13):
        factory = sessionmaker(engine)
        track_sessions(factory)
        with factory() as session:
            set_actor(session, f"user{n}")
            txids.append(_sa_insert(session, n))
            session.commit()
        del factory, session
        gc.collect()
    assert [_attribution(conn, t)[0] for t in txids] == [f"user{n}" for n in range(1, 13)]


def test_tracking_a_session_class_covers_its_subclasses_once(
    engine: sqlalchemy.Engine, conn: psycopg.Connection[Any]
) -> None:
    class Base(Session):
        pass

    class Child(Base):
        pass

    track_sessions(Base)
    track_sessions(Child)  # covered by Base's listener: none of its own
    track_sessions(Base)
    with Child(engine) as session:
        set_actor(session, "dana")
        txid = _sa_insert(session, 1)
        session.commit()
    assert _attribution(conn, txid) == ("dana", None)
    assert "_pgaudit_tracked" not in vars(Child)


# --------------------------------------------------------------------------- pooler safety


def test_shared_connection_never_leaks_attribution(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    """As behind PgBouncer in transaction mode: several clients' transactions on ONE connection."""
    turns = [("alice", {"c": "a"}), ("bob", {"c": "b"}), (None, None)] * 3
    expected: dict[int, tuple[str | None, Any]] = {}
    for n, (actor, context) in enumerate(turns, start=1):
        if actor is None:
            with conn.transaction():
                txid = _insert(conn, n)
        else:
            with audit_context(conn, actor, context):
                txid = _insert(conn, n)
        expected[txid] = (actor, context)
    assert len(expected) == len(turns)
    for txid, attribution in expected.items():
        assert _attribution(conn, txid) == attribution


def test_shared_pooled_connection_sqlalchemy(
    items: Audit, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """Two sessions, one pooled DBAPI connection: an unattributed session gets NULL."""
    eng = sqlalchemy_engine(dsn, poolclass=sqlalchemy.pool.StaticPool)
    try:
        factory = sessionmaker(eng)
        track_sessions(factory)
        with factory() as tracked, factory() as anonymous:
            set_actor(tracked, "bob")
            pids = set()
            txids = []
            for n in range(1, 7, 2):
                txids.append(("bob", _sa_insert(tracked, n)))
                pids.add(tracked.execute(text("SELECT pg_backend_pid()")).scalar_one())
                tracked.commit()
                txids.append((None, _sa_insert(anonymous, n + 1)))
                pids.add(anonymous.execute(text("SELECT pg_backend_pid()")).scalar_one())
                anonymous.commit()
        assert len(pids) == 1, "the sessions must share one server connection"
    finally:
        eng.dispose()
    for actor, txid in txids:
        assert _attribution(conn, txid) == (actor, None)


# --------------------------------------------------------------------------- SQL helpers


def test_sql_set_actor(items: Audit, conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("""SELECT audit.set_actor('carol', '{"k": 1}')""")
        txid = _insert(conn, 1)
    assert _attribution(conn, txid) == ("carol", {"k": 1})
    # Transaction-local: the next transaction carries nothing.
    with conn.transaction():
        assert _settings(conn) == ("", "")
        later = _insert(conn, 2)
    assert _attribution(conn, later) == (None, None)
    with conn.transaction():
        conn.execute("SELECT audit.set_actor('dora')")
        only_actor = _insert(conn, 3)
    assert _attribution(conn, only_actor) == ("dora", None)


def test_sql_set_actor_rejects_non_object_context(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    for bad in ("[1]", '"text"', "3"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="JSON object"):
            conn.execute("SELECT audit.set_actor('x', %s::jsonb)", (bad,))


def test_malformed_context_setting_fails_the_write(
    items: Audit, conn: psycopg.Connection[Any]
) -> None:
    for bad in ("not json", "[1, 2]"):
        with pytest.raises(psycopg.Error, match=r"pgaudit\.context") as info, conn.transaction():
            conn.execute("SELECT set_config('pgaudit.context', %s, true)", (bad,))
            conn.execute("INSERT INTO items VALUES (1, 'x')")
        assert info.value.sqlstate == "22023"
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM audit.change").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM audit.transaction").fetchone() == (0,)
