"""A cheaper write path: no CHECK constraint on audit.change.op.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0007")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
