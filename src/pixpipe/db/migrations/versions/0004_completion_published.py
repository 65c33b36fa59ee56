"""requests.completion_published_at: the completion event is confirmed by JetStream

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 15:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("completion_published_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index("ix_requests_completion_published_at",
                              ["completion_published_at"], unique=False)
    # Requests finished before this revision had their completion published already.
    op.execute("UPDATE requests SET completion_published_at = completed_at "
               "WHERE status IN ('completed', 'failed')")


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_completion_published_at")
        batch_op.drop_column("completion_published_at")
