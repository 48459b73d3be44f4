"""History survives a move (audit.home, audit.relocation); reverts through application triggers;
capture that never fails on a json value (issue 15).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0008")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
