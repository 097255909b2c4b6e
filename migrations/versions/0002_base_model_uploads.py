"""uploaded base-model weights

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "base_model_uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=40), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["owners.id"], name=op.f("fk_base_model_uploads_owner_id_owners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_model_uploads")),
    )
    with op.batch_alter_table("base_model_uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_base_model_uploads_owner_id"), ["owner_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("base_model_uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_base_model_uploads_owner_id"))
    op.drop_table("base_model_uploads")
