"""images.product_name, copied from products so status reads need no join

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("product_name", sa.Text(), nullable=True))
    op.execute(
        "UPDATE images SET product_name = "
        "(SELECT products.product_name FROM products WHERE products.id = images.product_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("product_name")
