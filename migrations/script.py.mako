"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from pgaudit_tool.schema import run_sql_revision

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    run_sql_revision(${repr(up_revision)})


def downgrade() -> None:
    raise NotImplementedError(
        "pgaudit_tool schema revisions are not reversible: history would be lost"
    )
