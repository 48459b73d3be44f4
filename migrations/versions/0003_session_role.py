"""The acting role is the session's role (SET ROLE or login), which statements cannot forge.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0003")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
