"""Alembic environment of the pgaudit_tool audit schema.

The version table is ``audit.schema_version`` (never the application's ``alembic_version``).
Online, the caller passes an open SQLAlchemy connection in ``config.attributes["connection"]``
and commits; every revision runs in that one transaction. Offline (``--sql``), the SQL is
printed, starting with the CREATE SCHEMA that the version table needs.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from pgaudit_tool.schema import SCHEMA, VERSION_TABLE, prepare_schema

config = context.config


def run_offline() -> None:
    context.configure(
        dialect_name="postgresql",
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    prepare_schema(connection)
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
