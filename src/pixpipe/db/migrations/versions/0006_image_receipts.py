"""images: the receipt of each completed image (quality used, encoder, effort, score)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality_used", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("encoder", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("effort", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("score", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("score")
        batch_op.drop_column("effort")
        batch_op.drop_column("encoder")
        batch_op.drop_column("quality_used")
