"""The app: installs the attribution on every PostgreSQL connection Django opens."""

from __future__ import annotations

from django.apps import AppConfig


class PgauditConfig(AppConfig):
    name = "pgaudit_tool.contrib.django"
    label = "pgaudit"
    verbose_name = "pgaudit_tool"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        from pgaudit_tool.contrib.django.attribution import install_on

        connection_created.connect(install_on, dispatch_uid="pgaudit_tool.install_on")
        for connection in connections.all(initialized_only=True):  # opened before ready()
            if connection.connection is not None:
                install_on(connection=connection)
