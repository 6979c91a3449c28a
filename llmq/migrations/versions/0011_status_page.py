"""the status page: admin keys, browser sessions, and the indexes its pages read by

Revision ID: 0011
Revises: 0010
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('admin', sa.Boolean(), nullable=False,
                                        server_default=sa.false()))
    op.create_table(
        'ui_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=True),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_ui_sessions_expires_at'), 'ui_sessions', ['expires_at'])
    # every batch newest first (an admin's list), and results by time (throughput charts)
    op.create_index('ix_batches_created', 'batches', ['created_at'])
    op.create_index(op.f('ix_results_created_at'), 'results', ['created_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_results_created_at'), table_name='results')
    op.drop_index('ix_batches_created', table_name='batches')
    op.drop_index(op.f('ix_ui_sessions_expires_at'), table_name='ui_sessions')
    op.drop_table('ui_sessions')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('admin')
