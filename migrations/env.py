"""Alembic environment of the pgaudit_tool audit schema.

The version table is ``audit.schema_version`` (never the application's ``alembic_version``).
Online, the caller passes an open SQLAlchemy connection in ``config.attributes["connection"]``
and commits; every revision runs in that one transaction. Offline (``--sql``), the SQL is
printed, starting with the CREATE SCHEMA that the version table needs.

After the pending revisions, ``sql/functions/`` is re-applied (:func:`apply_functions`): the
functions are this version's whatever revision the database came from, so only the newest
revision can be the target.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from pgaudit_tool.errors import AuditError
from pgaudit_tool.schema import (
    SCHEMA,
    VERSION_TABLE,
    apply_functions,
    head_revision,
    prepare_schema,
)

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
        apply_functions()


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
        before = context.get_context().get_current_revision()
        context.run_migrations()
        if context.get_context().get_current_revision() != before:
            apply_functions()


def _check_target() -> None:
    target = context.get_revision_argument()
    if target not in ("head", head_revision()):
        raise AuditError(
            f"the audit schema can only be upgraded to the newest revision, not {target!r}"
        )


_check_target()
if context.is_offline_mode():
    run_offline()
else:
    run_online()
