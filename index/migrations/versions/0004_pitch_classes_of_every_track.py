"""pitch classes of every track

The version layer (re-performances) aligns an output with a track's pitch-class power, stored here
per track. Tracks indexed before this revision have none: the version layer does not see them
until ``clearance index --rebuild`` takes them again from their files.

Revision ID: 0004
Revises: 0003
Created: 2026-12-07 02:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pitch_classes',
        sa.Column('track_id', sa.Integer(), nullable=False),
        sa.Column('classes', sa.LargeBinary(), nullable=False),
        sa.Column('version', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['track_id'], ['tracks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('track_id'),
    )


def downgrade() -> None:
    op.drop_table('pitch_classes')
