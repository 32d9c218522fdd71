"""m003_prediction_log: every served request (version, latency, where its rows are) and the logged rows
themselves, columnar, in batches.

Revision ID: m003_prediction_log
Revises: m002_registry
"""

from alembic import op
import sqlalchemy as sa


revision = 'm003_prediction_log'
down_revision = 'm002_registry'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('prediction_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('n_rows', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_batches'))
    )
    with op.batch_alter_table('prediction_batches', schema=None) as batch_op:
        batch_op.create_index('ix_prediction_batches_model_version_id', ['model', 'version', 'id'], unique=False)

    op.create_table('predictions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('endpoint', sa.String(length=40), nullable=False),
    sa.Column('n_rows', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Double(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['prediction_batches.id'], name=op.f('fk_predictions_batch_id_prediction_batches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_predictions'))
    )
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_predictions_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_predictions_model_version_id', ['model', 'version', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_predictions_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_predictions_batch_id'), ['batch_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predictions_batch_id'))
        batch_op.drop_index(batch_op.f('ix_predictions_request_id'))
        batch_op.drop_index('ix_predictions_model_version_id')
        batch_op.drop_index(batch_op.f('ix_predictions_created_at'))

    op.drop_table('predictions')
    with op.batch_alter_table('prediction_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_prediction_batches_model_version_id')

    op.drop_table('prediction_batches')
