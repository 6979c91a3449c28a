"""summaries: quality measured by code, and a flag for those below the floor

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('summaries') as batch:
        batch.add_column(sa.Column('quality', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('flagged', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('summaries') as batch:
        batch.drop_column('flagged')
        batch.drop_column('quality')
