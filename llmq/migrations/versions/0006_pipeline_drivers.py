"""pipeline_runs: which driver chain moves a run, and when it last did

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.add_column(sa.Column('driver', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('driven_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.drop_column('driven_at')
        batch.drop_column('driver')
