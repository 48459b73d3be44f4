"""alembic operations that manage auditing from a project's own migrations.

Importing this module (in ``env.py``, or at the top of a migration) registers::

    op.enable_audit("sales.orders", exclude=["card_number"], capture_truncate=None)
    op.disable_audit("sales.orders")
    op.refresh_audit("sales.orders")   # after DDL on an audited table

Each runs the SQL API (``SELECT audit.enable(...)``, ...) in the migration's transaction, online,
or prints it with ``alembic upgrade --sql`` (values as quoted literals). Each has a ``reverse()``
(enable <-> disable; refresh is its own), used by autogenerate's downgrade and by
``op.invoke(op_object.reverse())``. A table disabled and enabled again keeps its exclusions and
settings, so a downgrade that disables and the upgrade after it restore them as they were.

The audit schema itself is installed and upgraded by ``pgaudit-tool install`` (its own
revisions, version table ``audit.schema_version``), not by the project's migrations.

For ``env.py`` with ``include_schemas=True``: :func:`include_name` / :func:`include_object` (or
:func:`filters` to combine them with your own) keep autogenerate from proposing to drop the
audit schema's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alembic.autogenerate import renderers
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Boolean, Text, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY

from pgaudit_tool.errors import InvalidInput, NotInstalled
from pgaudit_tool.schema import SCHEMA

__all__ = [
    "DisableAuditOp",
    "EnableAuditOp",
    "RefreshAuditOp",
    "filters",
    "include_name",
    "include_object",
]


def _table_name(table: str) -> str:
    if not isinstance(table, str) or not table.strip():
        raise InvalidInput("a table name is required, e.g. 'sales.orders'")
    return table


@Operations.register_operation("enable_audit")
class EnableAuditOp(MigrateOperation):
    """``op.enable_audit(table, exclude=None, capture_truncate=None)``: ``audit.enable``.

    ``table`` as PostgreSQL parses it (``'sales.orders'``, ``'"Sales"."Order Items"'``);
    ``exclude``: columns never stored (None keeps the table's current list);
    ``capture_truncate``: store the rows TRUNCATE removes (None: on for a new table, else kept).
    """

    def __init__(
        self,
        table: str,
        exclude: Sequence[str] | None = None,
        capture_truncate: bool | None = None,
    ) -> None:
        self.table = _table_name(table)
        if isinstance(exclude, str):
            raise InvalidInput(
                f"exclude must be a list of column names, not the string {exclude!r}"
            )
        self.exclude = None if exclude is None else [str(c) for c in exclude]
        self.capture_truncate = capture_truncate

    @classmethod
    def enable_audit(
        cls,
        operations: Operations,
        table: str,
        exclude: Sequence[str] | None = None,
        capture_truncate: bool | None = None,
    ) -> Any:
        """Start (or reconfigure) capture of ``table``."""
        return operations.invoke(cls(table, exclude, capture_truncate))

    def reverse(self) -> DisableAuditOp:
        return DisableAuditOp(self.table)


@Operations.register_operation("disable_audit")
class DisableAuditOp(MigrateOperation):
    """``op.disable_audit(table)``: ``audit.disable``; the history stays."""

    def __init__(self, table: str) -> None:
        self.table = _table_name(table)

    @classmethod
    def disable_audit(cls, operations: Operations, table: str) -> Any:
        """Stop capture of ``table`` (its history stays)."""
        return operations.invoke(cls(table))

    def reverse(self) -> EnableAuditOp:
        return EnableAuditOp(self.table)  # None: the exclusions and settings it had


@Operations.register_operation("refresh_audit")
class RefreshAuditOp(MigrateOperation):
    """``op.refresh_audit(table)``: ``audit.refresh``, after DDL on an audited table."""

    def __init__(self, table: str) -> None:
        self.table = _table_name(table)

    @classmethod
    def refresh_audit(cls, operations: Operations, table: str) -> Any:
        """Regenerate capture of ``table`` after DDL."""
        return operations.invoke(cls(table))

    def reverse(self) -> RefreshAuditOp:
        return RefreshAuditOp(self.table)


_ENABLE = text(
    "SELECT audit.enable(CAST(:table AS regclass), CAST(:exclude AS text[]), :capture_truncate)"
)
_DISABLE = text("SELECT audit.disable(CAST(:table AS regclass))")
_REFRESH = text("SELECT audit.refresh(CAST(:table AS regclass))")
_OFFLINE = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
_INSTALLED = text(
    "SELECT pg_catalog.to_regprocedure('audit.enable(regclass, text[], boolean)') IS NOT NULL"
)


def _run(operations: Operations, statement: Any) -> None:
    if operations.migration_context.as_sql:
        # Rendered here with literal values and the "named" parameter style whatever env.py
        # configured: with psycopg's "pyformat" a % in a name would come out doubled.
        impl = operations.migration_context.impl
        sql = statement.compile(dialect=_OFFLINE, compile_kwargs={"literal_binds": True})
        impl.static_output(f"{sql}{impl.command_terminator}")
        return
    installed = operations.get_bind().execute(_INSTALLED).scalar()
    if not installed:
        raise NotInstalled(
            "the audit schema is not installed in this database",
            hint="Run 'pgaudit-tool install' (or Audit.install()) before these migrations.",
        )
    operations.execute(statement)


@Operations.implementation_for(EnableAuditOp)
def _enable(operations: Operations, operation: EnableAuditOp) -> None:
    _run(
        operations,
        _ENABLE.bindparams(
            bindparam("table", operation.table, type_=Text),
            bindparam("exclude", operation.exclude, type_=ARRAY(Text)),
            bindparam("capture_truncate", operation.capture_truncate, type_=Boolean),
        ),
    )


@Operations.implementation_for(DisableAuditOp)
def _disable(operations: Operations, operation: DisableAuditOp) -> None:
    _run(operations, _DISABLE.bindparams(bindparam("table", operation.table, type_=Text)))


@Operations.implementation_for(RefreshAuditOp)
def _refresh(operations: Operations, operation: RefreshAuditOp) -> None:
    _run(operations, _REFRESH.bindparams(bindparam("table", operation.table, type_=Text)))


# -- autogenerate: render the operations in generated migration scripts ---------------------


@renderers.dispatch_for(EnableAuditOp)
def _render_enable(autogen_context: Any, op: EnableAuditOp) -> str:
    args = [repr(op.table)]
    if op.exclude is not None:
        args.append(f"exclude={op.exclude!r}")
    if op.capture_truncate is not None:
        args.append(f"capture_truncate={op.capture_truncate!r}")
    return f"op.enable_audit({', '.join(args)})"


@renderers.dispatch_for(DisableAuditOp)
def _render_disable(autogen_context: Any, op: DisableAuditOp) -> str:
    return f"op.disable_audit({op.table!r})"


@renderers.dispatch_for(RefreshAuditOp)
def _render_refresh(autogen_context: Any, op: RefreshAuditOp) -> str:
    return f"op.refresh_audit({op.table!r})"


# -- env.py filters ------------------------------------------------------------------------


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """alembic ``include_name``: False for the audit schema and everything in it."""
    if type_ == "schema":
        return name != SCHEMA
    return parent_names.get("schema_name") != SCHEMA


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """alembic ``include_object``: False for the tables (and their columns, indexes,
    constraints) of the audit schema."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return getattr(table, "schema", None) != SCHEMA


def filters(
    include_name: Callable[..., bool] | None = None,
    include_object: Callable[..., bool] | None = None,
) -> dict[str, Callable[..., bool]]:
    """``context.configure(..., include_schemas=True, **filters(your_name, your_object))``:
    the audit schema left out, then your own filters (optional) asked."""
    theirs_name, theirs_object = include_name, include_object

    def name_filter(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
        if not _include_name(name, type_, parent_names):
            return False
        return theirs_name is None or theirs_name(name, type_, parent_names)

    def object_filter(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if not _include_object(obj, name, type_, reflected, compare_to):
            return False
        return theirs_object is None or theirs_object(obj, name, type_, reflected, compare_to)

    return {"include_name": name_filter, "include_object": object_filter}


_include_name = include_name
_include_object = include_object
