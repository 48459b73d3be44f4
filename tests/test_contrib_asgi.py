"""SQLAlchemy apps: the README's Starlette example run as written (its engine pointed at the test
database, one pooled connection), and the asyncio variant (AsyncSession on psycopg's async
driver); every assertion reads audit.history."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import Audit, acting_as, set_actor, track_sessions

pytest.importorskip("starlette")

from starlette.testclient import TestClient

README = Path(__file__).resolve().parent.parent / "README.md"
_README_URL = '"postgresql+psycopg://app@db/shop"'


def _url(dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    return f"postgresql+psycopg://{p['user']}@/{p['dbname']}?host={p['host']}&port={p['port']}"


def readme_example() -> str:
    """The python block of the README's "SQLAlchemy with Starlette or FastAPI" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### SQLAlchemy with Starlette or FastAPI\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    assert len(blocks[0].splitlines()) < 20  # "under 20 lines to adopt"
    return str(blocks[0])


@pytest.fixture
def shop(dsn: str, audit: Audit) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA sales")
        conn.execute("CREATE TABLE sales.orders (id int PRIMARY KEY, amount int NOT NULL)")
        conn.execute("INSERT INTO sales.orders SELECT g, 100 FROM generate_series(1, 5) g")
    audit.enable("sales.orders")
    return dsn


def history(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT pk->>'id', actor, context, backend_pid, txid::text FROM audit.history"
            " ORDER BY id"
        ).fetchall()


def test_readme_starlette_example(shop: str) -> None:
    code = readme_example()
    assert _README_URL in code
    code = code.replace(_README_URL, f"{_url(shop)!r}, pool_size=1, max_overflow=0")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    engine = namespace["Session"].kw["bind"]
    try:
        with TestClient(namespace["app"]) as client:
            for user, order in (("alice", 1), ("bob", 2), ("alice", 3), (None, 4)):
                headers = {"x-request-id": f"r{order}", "user-agent": "tests"}
                if user:
                    headers["x-user"] = user
                response = client.post(f"/orders/{order}/pay", headers=headers)
                assert response.status_code == 200
    finally:
        engine.dispose()
    rows = history(shop)
    assert [(pk, actor) for pk, actor, *_ in rows] == [
        ("1", "alice"), ("2", "bob"), ("3", "alice"), ("4", None),
    ]  # fmt: skip
    for pk, _, context, _, _ in rows:
        # TestClient's peer is "testclient", not an address: no "ip".
        assert context == {
            "request_id": f"r{pk}", "method": "POST", "path": f"/orders/{pk}/pay",
            "user_agent": "tests",
        }  # fmt: skip
    assert len({pid for *_, pid, _ in rows}) == 1  # one pooled connection served them all
    assert len({txid for *_, txid in rows}) == 4


def test_async_sessions(shop: str) -> None:
    pytest.importorskip("greenlet")
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pgaudit_tool.contrib.asgi import AuditMiddleware

    engine = create_async_engine(_url(shop), pool_size=1, max_overflow=0)
    Session = async_sessionmaker(engine)
    track_sessions(Session)
    track_sessions(Session)  # idempotent: one tracked class
    tracked = Session.kw["sync_session_class"]
    assert [c.__name__ for c in tracked.__mro__[:2]] == ["TrackedSession", "Session"]

    async def pay(request: Any) -> PlainTextResponse:
        async with Session.begin() as session:
            await session.execute(
                text("UPDATE sales.orders SET amount = 0 WHERE id = :id"), request.path_params
            )
        if request.query_params.get("fail"):
            async with Session.begin() as session:
                await session.execute(text("UPDATE sales.orders SET amount = 1 WHERE id = 5"))
                raise RuntimeError("rolled back")
        return PlainTextResponse("paid")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await engine.dispose()  # on the app's own event loop

    app = Starlette(
        lifespan=lifespan,
        routes=[Route("/orders/{id:int}/pay", pay, methods=["POST"])],
        middleware=[
            Middleware(
                AuditMiddleware,
                actor=lambda conn: conn.headers.get("x-user"),
                context=lambda conn: {"tenant": conn.headers.get("x-tenant")},
                trusted_proxy_header="X-Forwarded-For",
            )
        ],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        alice = {"x-user": "alice", "x-tenant": "acme"}
        assert client.post("/orders/1/pay", headers=alice).status_code == 200
        failed = client.post("/orders/2/pay?fail=1", headers={"x-user": "bob"})
        assert failed.status_code == 500
        spoofed = {"x-user": "carol", "x-forwarded-for": "10.0.0.1, 198.51.100.7"}
        assert client.post("/orders/3/pay", headers=spoofed).status_code == 200
        assert client.post("/orders/4/pay").status_code == 200
    rows = history(shop)
    # bob's first transaction committed; his second (order 5) rolled back: not recorded.
    assert [(pk, actor) for pk, actor, *_ in rows] == [
        ("1", "alice"), ("2", "bob"), ("3", "carol"), ("4", None),
    ]  # fmt: skip
    assert rows[2][2]["ip"] == "198.51.100.7"  # the entry the trusted proxy appended
    assert rows[0][2]["tenant"] == "acme"  # context= hook
    assert [("tenant" in ctx) for _, _, ctx, *_ in rows] == [True, False, False, False]
    assert len({pid for *_, pid, _ in rows}) == 1


def test_acting_as_and_set_actor_outside_requests(shop: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    engine = create_engine(_url(shop), pool_size=1, max_overflow=0)
    Session = sessionmaker(engine)
    track_sessions(Session)
    track_sessions(Session)  # idempotent
    update = text("UPDATE sales.orders SET amount = amount + 1 WHERE id = :id")
    try:
        with acting_as("nightly", {"job": "import"}):
            with Session.begin() as session:
                session.execute(update, {"id": 1})
            with Session() as session:
                set_actor(session, "dba", {"ticket": "OPS-7"})  # the session's own wins
                session.execute(update, {"id": 2})
                session.commit()
        with Session.begin() as session:  # outside: nobody
            session.execute(update, {"id": 3})
    finally:
        engine.dispose()
    assert [(pk, actor, ctx) for pk, actor, ctx, *_ in history(shop)] == [
        ("1", "nightly", {"job": "import"}),
        ("2", "dba", {"ticket": "OPS-7"}),
        ("3", None, None),
    ]


def test_fastapi(shop: str) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    from pgaudit_tool.contrib.asgi import AuditMiddleware

    engine = create_engine(_url(shop), pool_size=1, max_overflow=0)
    Session = sessionmaker(engine)
    track_sessions(Session)
    app = FastAPI()
    app.add_middleware(AuditMiddleware, actor=lambda conn: conn.headers.get("x-user"))

    @app.post("/orders/{order_id}/pay")
    def pay(order_id: int) -> dict[str, int]:  # sync: run in a worker thread
        with Session.begin() as session:
            session.execute(
                text("UPDATE sales.orders SET amount = 0 WHERE id = :id"), {"id": order_id}
            )
        return {"paid": order_id}

    try:
        with TestClient(app) as client:
            assert client.post("/orders/1/pay", headers={"x-user": "alice"}).status_code == 200
            assert client.post("/orders/2/pay").status_code == 200
    finally:
        engine.dispose()
    assert [(pk, actor, ctx["path"]) for pk, actor, ctx, *_ in history(shop)] == [
        ("1", "alice", "/orders/1/pay"),
        ("2", None, "/orders/2/pay"),
    ]
