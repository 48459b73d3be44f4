"""A partitioned log: audit.change and audit.transaction range-partitioned by the start of
their transaction (issue 16).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0009")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
