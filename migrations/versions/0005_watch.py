"""Watch: alerts raised by the watcher and its durable cursor.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0005")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
