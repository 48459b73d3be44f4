"""Capture functions rewritten by the DDL guard after ALTER TABLE, without a per-statement check.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from pgaudit_tool.schema import run_sql_revision

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_revision("0002")


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
