"""model variants: every measured figure beyond KL, top-1 and tokens/s

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_variants') as batch:
        batch.add_column(sa.Column('metrics', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_variants') as batch:
        batch.drop_column('metrics')
