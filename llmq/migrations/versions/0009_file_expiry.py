"""files.expires_at and batches.output_expires_seconds: OpenAI's expires_after and
output_expires_after, which the workers' sweep acts on

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # files uploaded before keep no expiry: nobody asked for one
    op.add_column('files', sa.Column('expires_at', sa.DateTime(), nullable=True))
    op.create_index(op.f('ix_files_expires_at'), 'files', ['expires_at'])
    op.add_column('batches', sa.Column('output_expires_seconds', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('output_expires_seconds')
    op.drop_index(op.f('ix_files_expires_at'), table_name='files')
    with op.batch_alter_table('files') as batch:
        batch.drop_column('expires_at')
