"""results: cached_tokens, the prompt tokens the prefix cache served (a batch's usage)

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # results written before are counted as served without the cache
    op.add_column('results', sa.Column('cached_tokens', sa.Integer(), server_default='0',
                                       nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('results') as batch:
        batch.drop_column('cached_tokens')
