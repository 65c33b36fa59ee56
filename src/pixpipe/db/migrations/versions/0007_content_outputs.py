"""content_outputs, source_validators, content_claims: reuse of encoded outputs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_outputs",
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("output_path", sa.Text(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("quality_used", sa.Integer(), nullable=True),
        sa.Column("encoder", sa.String(length=32), nullable=True),
        sa.Column("effort", sa.String(length=16), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"],
                                name=op.f("fk_content_outputs_request_id_requests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("content_key", name=op.f("pk_content_outputs")),
    )
    with op.batch_alter_table("content_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_content_outputs_request_id"), ["request_id"],
                              unique=False)
    op.create_table(
        "source_validators",
        sa.Column("lookup_key", sa.String(length=64), nullable=False),
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("last_modified", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"],
                                name=op.f("fk_source_validators_request_id_requests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("lookup_key", name=op.f("pk_source_validators")),
    )
    with op.batch_alter_table("source_validators", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_source_validators_request_id"), ["request_id"],
                              unique=False)
    op.create_table(
        "content_claims",
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("content_key", name=op.f("pk_content_claims")),
    )


def downgrade() -> None:
    op.drop_table("content_claims")
    op.drop_table("source_validators")
    op.drop_table("content_outputs")
