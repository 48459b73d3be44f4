"""Django integration: every write made while serving a request is attributed to its user.

    INSTALLED_APPS = [..., "pgaudit_tool.contrib.django"]
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "pgaudit_tool.contrib.django.AuditMiddleware", ...]

Outside requests (management commands, Celery tasks, scripts)::

    from pgaudit_tool.contrib.django import context

    with context(actor="nightly-import", ticket="OPS-7"):
        Order.objects.filter(...).update(...)

How the attribution reaches the database, transaction-local, is told in
:mod:`pgaudit_tool.contrib.django.attribution`.
"""

from pgaudit_tool.contrib.django.attribution import context, current
from pgaudit_tool.contrib.django.middleware import AuditMiddleware

__all__ = ["AuditMiddleware", "context", "current"]
