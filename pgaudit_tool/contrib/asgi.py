"""An ASGI middleware (Starlette, FastAPI, any ASGI app) naming the actor of each request's
writes made through SQLAlchemy sessions tracked by :func:`pgaudit_tool.track_sessions`.

    from pgaudit_tool import track_sessions
    from pgaudit_tool.contrib.asgi import AuditMiddleware

    track_sessions(Session)  # a sessionmaker, or an async_sessionmaker
    app.add_middleware(AuditMiddleware, actor=lambda conn: conn.user.username)

For each HTTP request it puts :func:`pgaudit_tool.acting_as` in force around the application:
every transaction a tracked session begins while serving it records the actor and the context
(request id, method, path, client IP, user agent, plus what ``context`` adds), transaction-local.
It is plain ASGI: the only import of Starlette is ``HTTPConnection``, made when a request comes.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from pgaudit_tool.context import acting_as

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]
_MAX_TEXT = 512


class AuditMiddleware:
    """``actor(conn) -> str | None`` and ``context(conn) -> Mapping`` receive a Starlette
    ``HTTPConnection`` (``.user`` needs Starlette's AuthenticationMiddleware before this one;
    ``.headers``, ``.client``, ``.url``). ``trusted_proxy_header`` (e.g. ``"x-forwarded-for"``):
    the client IP is the entry your proxy appended (the ``trusted_proxy_count``-th from the
    end) instead of the socket's peer. ``request_id_header``: recorded when present (None:
    never read), else a new UUID."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Any], str | None],
        context: Callable[[Any], Mapping[str, Any] | None] | None = None,
        trusted_proxy_header: str | None = None,
        trusted_proxy_count: int = 1,
        request_id_header: str | None = "x-request-id",
    ) -> None:
        self.app = app
        self.actor = actor
        self.context = context
        self.proxy_header = trusted_proxy_header.lower() if trusted_proxy_header else None
        self.proxy_count = trusted_proxy_count
        self.request_id_header = request_id_header.lower() if request_id_header else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        with acting_as(self.actor(conn), self.request_context(conn)):
            await self.app(scope, receive, send)

    def request_context(self, conn: Any) -> dict[str, Any]:
        headers = conn.headers
        request_id = headers.get(self.request_id_header) if self.request_id_header else None
        found: dict[str, Any] = {
            "request_id": (request_id or uuid.uuid4().hex)[:200],
            "method": conn.scope.get("method"),
            "path": conn.url.path[:_MAX_TEXT],
            "ip": self.client_ip(conn),
            "user_agent": (headers.get("user-agent") or "")[:_MAX_TEXT] or None,
        }
        if self.context is not None:
            found.update(self.context(conn) or {})
        return {key: value for key, value in found.items() if value is not None}

    def client_ip(self, conn: Any) -> str | None:
        if self.proxy_header:
            entries = [e.strip() for e in conn.headers.get(self.proxy_header, "").split(",")]
            entries = [e for e in entries if e]
            if len(entries) >= self.proxy_count >= 1:
                found = _address(entries[-self.proxy_count])
                if found is not None:
                    return found
        return _address(conn.client.host) if conn.client else None


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        return None
