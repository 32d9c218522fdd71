"""m006_pending_index: prediction-log batches whose per-request index rows are deferred.

A busy server writes each prediction-log flush as one batch row and leaves the flush's index rows (one per
request) in ``pending_index``; they are written to ``predictions`` in a quiet window or by the first reader.

Revision ID: m006_pending_index
Revises: m005_monitoring
"""

from alembic import op
import sqlalchemy as sa


revision = 'm006_pending_index'
down_revision = 'm005_monitoring'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('prediction_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_index', sa.Text(), nullable=True))
        batch_op.create_index('ix_prediction_batches_pending', ['id'], unique=False,
                              sqlite_where=sa.text('pending_index IS NOT NULL'),
                              postgresql_where=sa.text('pending_index IS NOT NULL'))


def downgrade() -> None:
    # deferred index rows still in the column are dropped with it: run a monitor command (it writes them) first
    with op.batch_alter_table('prediction_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_prediction_batches_pending', sqlite_where=sa.text('pending_index IS NOT NULL'),
                            postgresql_where=sa.text('pending_index IS NOT NULL'))
        batch_op.drop_column('pending_index')
