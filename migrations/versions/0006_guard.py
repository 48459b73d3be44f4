"""Guards: per-table limits on the rows one statement may change, enforced before commit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0006")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
