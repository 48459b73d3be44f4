"""Security and integrity, round 2: hostile names and types, trigger integrity, history breaks,
sticky exclusions, a chain that covers the registry and layouts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0004")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
