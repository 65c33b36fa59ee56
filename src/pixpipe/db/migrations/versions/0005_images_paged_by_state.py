"""images: page by state in serial order; product names only on products

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 02:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        # A filtered page (``status = ? ORDER BY serial_number, position``) reads only its
        # own rows with this index; the old one sorted every image in the state first.
        batch_op.drop_index("ix_images_request_id_status")
        batch_op.create_index("ix_images_request_id_status_serial_number_position",
                              ["request_id", "status", "serial_number", "position"],
                              unique=False)
        # The output CSV streams products in upload order and reads their images by product.
        batch_op.create_index("ix_images_product_id_position", ["product_id", "position"],
                              unique=False)
        # A product's name is stored once, on the product; images read it through product_id.
        batch_op.drop_column("product_name")


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("product_name", sa.Text(), nullable=True))
        batch_op.drop_index("ix_images_product_id_position")
        batch_op.drop_index("ix_images_request_id_status_serial_number_position")
        batch_op.create_index("ix_images_request_id_status", ["request_id", "status"],
                              unique=False)
    op.execute("UPDATE images SET product_name = (SELECT products.product_name FROM products "
               "WHERE products.id = images.product_id)")
