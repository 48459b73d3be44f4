"""Initial audit schema: registry, transaction and change log, seals.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0001")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
