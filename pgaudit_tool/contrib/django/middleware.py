"""``AuditMiddleware``: the writes of a request are attributed to its user, with its context.

Settings (all optional):

``PGAUDIT_ACTOR``
    What names the user: ``"username"`` (default, ``user.get_username()``), ``"id"`` (the
    primary key), ``"email"`` (the user model's e-mail field), or a callable ``f(request) ->
    str | None`` or its dotted path. Anonymous requests have no actor unless the callable gives one.
``PGAUDIT_TRUSTED_PROXY_HEADER``
    The header your reverse proxy sets to the client's address, e.g. ``"X-Forwarded-For"``.
    Without it, the client IP is ``REMOTE_ADDR``. With it, the entry appended by your own proxy
    (the last one; ``PGAUDIT_TRUSTED_PROXY_COUNT`` proxies in a chain: the Nth from the end), so
    a client cannot choose its IP by sending the header itself.
``PGAUDIT_REQUEST_ID_HEADER``
    The header carrying a request id to record (default ``"X-Request-ID"``; ``None``: never
    read). Without one, a new UUID.
``PGAUDIT_CONTEXT_HOOK``
    A callable ``f(request) -> Mapping`` or its dotted path: its keys are added to the context.
``PGAUDIT_DATABASES``, ``PGAUDIT_ATTRIBUTE_SELECTS``
    See :mod:`pgaudit_tool.contrib.django.attribution`.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from pgaudit_tool.contrib.django.attribution import attributed, require_app

_MAX_TEXT = 512


class AuditMiddleware:
    """Attribute every write made while serving the request (place it after
    ``AuthenticationMiddleware``)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        require_app()
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with attributed(_RequestActor(request), request_context(request)):
            return self.get_response(request)


class _RequestActor:
    """The actor of ``request``, looked up again only when ``request.user`` is another object
    (after ``login()`` or ``logout()`` in the view)."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.user: Any = _UNSEEN
        self.actor: str | None = None

    def __call__(self) -> str | None:
        user = getattr(self.request, "user", None)
        if user is not self.user:
            self.actor = actor_of(self.request)
            self.user = user
        return self.actor


_UNSEEN = object()


def actor_of(request: Any) -> str | None:
    """The actor of a request by ``PGAUDIT_ACTOR``."""
    from django.conf import settings

    how = getattr(settings, "PGAUDIT_ACTOR", "username")
    if callable(how) or (isinstance(how, str) and "." in how):
        value = _callable(how)(request)
        return None if value is None else str(value)
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    if how == "username":
        return str(user.get_username())
    if how == "id":
        return str(user.pk)
    if how == "email":
        value = getattr(user, user.get_email_field_name(), None)
        return str(value) if value else None
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"PGAUDIT_ACTOR is {how!r}: use 'username', 'id', 'email', a callable or its dotted path"
    )


def request_context(request: Any) -> dict[str, Any]:
    """request_id, method, path, ip, user_agent, and what ``PGAUDIT_CONTEXT_HOOK`` adds."""
    from django.conf import settings

    meta = request.META
    id_header = getattr(settings, "PGAUDIT_REQUEST_ID_HEADER", "X-Request-ID")
    request_id = meta.get(_meta_key(id_header)) if id_header else None
    found = {
        "request_id": (request_id or uuid.uuid4().hex)[:200],
        "method": request.method,
        "path": request.path[:_MAX_TEXT],
        "ip": client_ip(request),
        "user_agent": (meta.get("HTTP_USER_AGENT") or "")[:_MAX_TEXT] or None,
    }
    hook = getattr(settings, "PGAUDIT_CONTEXT_HOOK", None)
    if hook:
        extra = _callable(hook)(request)
        if extra:
            if not isinstance(extra, Mapping):
                raise TypeError(
                    f"PGAUDIT_CONTEXT_HOOK returned {type(extra).__name__}, not a mapping"
                )
            found.update(extra)
    return {key: value for key, value in found.items() if value is not None}


def client_ip(request: Any) -> str | None:
    """The client's address: ``REMOTE_ADDR``, or the trusted proxy's entry of its header."""
    from django.conf import settings

    meta = request.META
    header = getattr(settings, "PGAUDIT_TRUSTED_PROXY_HEADER", None)
    if header:
        entries = [e.strip() for e in str(meta.get(_meta_key(header), "")).split(",")]
        entries = [e for e in entries if e]
        count = int(getattr(settings, "PGAUDIT_TRUSTED_PROXY_COUNT", 1))
        if len(entries) >= count >= 1:
            candidate = _address(entries[-count])
            if candidate is not None:
                return candidate
    return _address(meta.get("REMOTE_ADDR") or "")


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        return None


def _meta_key(header: str) -> str:
    """``X-Forwarded-For`` -> ``HTTP_X_FORWARDED_FOR`` (META names are kept as given)."""
    if header.isupper() and "-" not in header:
        return header
    return "HTTP_" + header.upper().replace("-", "_")


@lru_cache(maxsize=32)
def _import(path: str) -> Callable[..., Any]:
    from django.utils.module_loading import import_string

    function: Callable[..., Any] = import_string(path)
    return function


def _callable(how: str | Callable[..., Any]) -> Callable[..., Any]:
    return _import(how) if isinstance(how, str) else how
