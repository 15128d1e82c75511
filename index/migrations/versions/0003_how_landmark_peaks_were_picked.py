"""how landmark peaks were picked

Catalog peaks are picked more densely since landmarks-v4 (``detector.landmarks.PEAKS`` peaks-v2).
Peaks stored before this revision are marked peaks-v1: the landmark layer still searches them,
and ``clearance index --rebuild`` takes them again from the tracks' files.

Revision ID: 0003
Revises: 0002
Created: 2026-12-06 21:50:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('landmarks', sa.Column('version', sa.String(length=16), nullable=False, server_default='peaks-v1'))


def downgrade() -> None:
    with op.batch_alter_table('landmarks') as batch:
        batch.drop_column('version')
