"""the HTTP API: keys, files, the OpenAI Batch fields of batches, workers' engine stats

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('key_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key_sha256'),
    )
    op.create_table(
        'files',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=40), nullable=True),
        sa.Column('filename', sa.String(length=300), nullable=False),
        sa.Column('purpose', sa.String(length=30), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('lines', sa.Integer(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['owner'], ['api_keys.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_files_owner_created', 'files', ['owner', 'created_at'])
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('owner', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('idempotency_key', sa.String(length=300), nullable=True))
        batch.add_column(sa.Column('input_file_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('endpoint', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('completion_window', sa.String(length=10), nullable=True))
        for column in ('validated_at', 'failed_at', 'expires_at', 'expired_at', 'finalized_at'):
            batch.add_column(sa.Column(column, sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('output_file_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('error_file_id', sa.String(length=64), nullable=True))
        batch.create_foreign_key('fk_batches_owner', 'api_keys', ['owner'], ['id'],
                                 ondelete='SET NULL')
        batch.create_unique_constraint('uq_batches_idempotency_key', ['idempotency_key'])
    op.create_index('ix_batches_owner_created', 'batches', ['owner', 'created_at'])
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('stats', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('stats')
    op.drop_index('ix_batches_owner_created', table_name='batches')
    with op.batch_alter_table('batches') as batch:
        batch.drop_constraint('uq_batches_idempotency_key', type_='unique')
        batch.drop_constraint('fk_batches_owner', type_='foreignkey')
        for column in ('error_file_id', 'output_file_id', 'finalized_at', 'expired_at',
                       'expires_at', 'failed_at', 'validated_at', 'completion_window',
                       'endpoint', 'input_file_id', 'idempotency_key', 'owner'):
            batch.drop_column(column)
    op.drop_index('ix_files_owner_created', table_name='files')
    op.drop_table('files')
    op.drop_table('api_keys')
