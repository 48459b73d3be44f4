"""pgaudit_tool.contrib.alembic: a throwaway alembic project whose migrations use
op.enable_audit / op.refresh_audit / op.disable_audit, upgraded and downgraded online against
a real database (audit.tracked_table and captured changes checked), and rendered offline."""

from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict

from pgaudit_tool import Audit
from pgaudit_tool.errors import NotInstalled

ENV_PY = """
from alembic import context
from sqlalchemy import create_engine

import pgaudit_tool.contrib.alembic as pgaudit_alembic  # registers op.enable_audit & co.

config = context.config
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as connection:
        context.configure(connection=connection, transactional_ddl=True, include_schemas=True,
                          **pgaudit_alembic.filters())
        with context.begin_transaction():
            context.run_migrations()
"""

FIRST = '''
"""orders, audited"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.execute("CREATE SCHEMA sales")
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("o'k %:card", sa.Text),
        schema="sales",
    )
    op.enable_audit("sales.orders", exclude=["o'k %:card"])


def downgrade():
    op.disable_audit("sales.orders")
    op.drop_table("orders", schema="sales")
    op.execute("DROP SCHEMA sales")
'''

SECOND = '''
"""a column added: capture refreshed"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("orders", sa.Column("note", sa.Text), schema="sales")
    # On a table with exclusions a new column is held out until they are set again.
    op.enable_audit("sales.orders", exclude=["o'k %:card"])


def downgrade():
    op.drop_column("orders", "note", schema="sales")
    op.refresh_audit("sales.orders")
'''


def _project(tmp_path: Path, dsn: str, out: io.StringIO | None = None) -> Config:
    (tmp_path / "versions").mkdir(exist_ok=True)
    (tmp_path / "env.py").write_text(textwrap.dedent(ENV_PY))
    (tmp_path / "script.py.mako").write_text("")
    (tmp_path / "versions" / "0001_orders.py").write_text(FIRST)
    (tmp_path / "versions" / "0002_note.py").write_text(SECOND)
    url = _url(dsn)
    cfg = Config(output_buffer=out) if out is not None else Config()
    cfg.set_main_option("script_location", str(tmp_path))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _url(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return (
        f"postgresql+psycopg://{params['user']}@/{params['dbname']}"
        f"?host={params['host']}&port={params['port']}"
    )


def _tracked(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT schema_name, table_name, enabled, excluded_columns, capture_truncate"
            " FROM audit.tracked_table ORDER BY relid"
        ).fetchall()


def test_upgrade_and_downgrade_online(tmp_path: Path, dsn: str, audit: Audit) -> None:
    cfg = _project(tmp_path, dsn)
    command.upgrade(cfg, "0001")
    assert _tracked(dsn) == [("sales", "orders", True, ["o'k %:card"], True)]
    with psycopg.connect(dsn) as conn:
        conn.execute(
            """INSERT INTO sales.orders (id, customer, "o'k %:card") VALUES (1, 'ACME', '4111')"""
        )
    command.upgrade(cfg, "head")
    assert _tracked(dsn) == [("sales", "orders", True, ["o'k %:card"], True)]
    assert _layout(dsn)[-1] == "4:25:note"
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE sales.orders SET note = 'rush' WHERE id = 1")
        rows = conn.execute("SELECT op, new FROM audit.history ORDER BY id").fetchall()
    # The card column is never stored; the column 0002 added is, once it set the exclusions.
    assert rows == [
        ("INSERT", {"id": 1, "customer": "ACME"}),
        ("UPDATE", {"id": 1, "customer": "ACME", "note": "rush"}),
    ]

    command.downgrade(cfg, "0001")  # drop_column, then refresh_audit
    assert all("note" not in column for column in _layout(dsn))
    assert _tracked(dsn) == [("sales", "orders", True, ["o'k %:card"], True)]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE sales.orders SET customer = 'ACME2' WHERE id = 1")
        last = conn.execute("SELECT new FROM audit.history ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ({"id": 1, "customer": "ACME2"},)

    command.downgrade(cfg, "base")
    assert [(s, t, enabled) for s, t, enabled, *_ in _tracked(dsn)] == [("sales", "orders", False)]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('sales.orders')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM audit.change").fetchone() == (3,)  # history stays

    # And up again: the same exclusions as before.
    command.upgrade(cfg, "head")
    assert _tracked(dsn)[-1] == ("sales", "orders", True, ["o'k %:card"], True)


def _layout(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT generated_layout FROM audit.tracked_table").fetchone()
    assert row is not None
    return list(row[0])


def test_operations_reach_the_database(dsn: str, audit: Audit) -> None:
    """Each operation calls its SQL function online: refresh of a table that is not audited
    fails with the function's own message; a name needing quotes is passed intact."""
    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import pgaudit_tool.contrib.alembic  # noqa: F401  (registers the operations)

    engine = sa.create_engine(_url(dsn))
    try:
        with engine.begin() as connection:
            connection.execute(sa.text('CREATE TABLE "Odd ""Name""" (id int PRIMARY KEY)'))
            op: Any = Operations(MigrationContext.configure(connection))
            op.enable_audit('"Odd ""Name"""', capture_truncate=False)
            op.refresh_audit('public."Odd ""Name"""')
            rows = connection.execute(
                sa.text("SELECT table_name, enabled, capture_truncate FROM audit.tracked_table")
            ).all()
            assert rows == [('Odd "Name"', True, False)]
            op.disable_audit('"Odd ""Name"""')
            connection.execute(sa.text("CREATE TABLE plain (id int PRIMARY KEY)"))
            with pytest.raises(sa.exc.DBAPIError, match="table public.plain is not audited"):
                op.refresh_audit("plain")
    finally:
        engine.dispose()
    assert _tracked(dsn) == []  # engine.begin() rolled back on the error


def test_refuses_clearly_without_the_audit_schema(tmp_path: Path, dsn: str) -> None:
    with pytest.raises(NotInstalled, match="not installed"):
        command.upgrade(_project(tmp_path, dsn), "head")
    with psycopg.connect(dsn) as conn:  # the migration's transaction was rolled back
        assert conn.execute("SELECT to_regclass('sales.orders')").fetchone() == (None,)


def test_offline_sql(tmp_path: Path, dsn: str) -> None:
    out = io.StringIO()
    command.upgrade(_project(tmp_path, dsn, out), "head", sql=True)
    text = out.getvalue()
    assert (
        "SELECT audit.enable(CAST('sales.orders' AS regclass),"
        " CAST(ARRAY['o''k %:card'] AS text[]), NULL);"
    ) in text
    assert text.index("CREATE TABLE sales.orders") < text.index("audit.enable")
    out = io.StringIO()
    command.downgrade(_project(tmp_path, dsn, out), "head:base", sql=True)
    assert "SELECT audit.refresh(CAST('sales.orders' AS regclass));" in out.getvalue()
    assert "SELECT audit.disable(CAST('sales.orders' AS regclass));" in out.getvalue()
    # The printed SQL runs as printed.
    with Audit.connect(dsn) as audit:
        audit.install()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text.encode())
    assert _tracked(dsn) == [("sales", "orders", True, ["o'k %:card"], True)]


def test_reverse_and_render() -> None:
    from alembic.autogenerate import render_python_code
    from alembic.operations import ops

    from pgaudit_tool.contrib.alembic import DisableAuditOp, EnableAuditOp, RefreshAuditOp

    enable = EnableAuditOp("sales.orders", exclude=["card"], capture_truncate=False)
    assert isinstance(enable.reverse(), DisableAuditOp)
    assert enable.reverse().table == "sales.orders"
    back = enable.reverse().reverse()
    assert (back.table, back.exclude, back.capture_truncate) == ("sales.orders", None, None)
    assert isinstance(RefreshAuditOp("t").reverse(), RefreshAuditOp)
    code = render_python_code(ops.UpgradeOps(ops=[enable, RefreshAuditOp("sales.orders")]))
    assert "op.enable_audit('sales.orders', exclude=['card'], capture_truncate=False)" in code
    assert "op.refresh_audit('sales.orders')" in code


def test_autogenerate_leaves_the_audit_schema_alone(dsn: str, audit: Audit) -> None:
    import sqlalchemy as sa
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from pgaudit_tool.contrib.alembic import filters

    url = _url(dsn)
    metadata = sa.MetaData()
    sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True), schema="sales")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE SCHEMA sales"))
            connection.execute(sa.text("CREATE TABLE sales.orders (id int PRIMARY KEY)"))
            connection.commit()

            def diff(**opts: Any) -> list[Any]:
                context = MigrationContext.configure(
                    connection, opts={"include_schemas": True, **opts}
                )
                return compare_metadata(context, metadata)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sa.exc.SAWarning)  # xid8, pg_snapshot columns
                unfiltered = diff()
            assert any(d[0] == "remove_table" and d[1].schema == "audit" for d in unfiltered)
            connection.execute(sa.text("CREATE TABLE sales.legacy (id int)"))
            connection.commit()
            with warnings.catch_warnings():
                warnings.simplefilter("error", sa.exc.SAWarning)  # the audit tables not even read
                filtered = diff(**filters())
            assert [(d[0], d[1].schema, d[1].name) for d in filtered] == [
                ("remove_table", "sales", "legacy")  # the project's own drift is still seen
            ]

            def not_legacy(name: Any, type_: str, parent_names: Any) -> bool:
                return name != "legacy"

            assert diff(**filters(include_name=not_legacy)) == []
    finally:
        engine.dispose()
