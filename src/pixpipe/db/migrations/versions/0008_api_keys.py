"""api_keys, and the key each request belongs to

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 06:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("webhook_secret", sa.Text(), nullable=False),
        sa.Column("max_concurrent_requests", sa.Integer(), nullable=True),
        sa.Column("max_images_per_hour", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_keys_token_sha256")),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_requests_api_key_id_api_keys"),
                                    "api_keys", ["api_key_id"], ["id"])
        batch_op.create_index("ix_requests_api_key_id_created_at",
                              ["api_key_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_api_key_id_created_at")
        batch_op.drop_constraint(batch_op.f("fk_requests_api_key_id_api_keys"),
                                 type_="foreignkey")
        batch_op.drop_column("api_key_id")
    op.drop_table("api_keys")
