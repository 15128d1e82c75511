"""works and their rights

A recording and the song it records are two rights: ``works`` holds the songs (an ISWC or the
catalog's own id, rights holder, rights) and a track may name the work it records. Tracks made
before this revision record none: they are decided by their recording's rights alone, as before.

Revision ID: 0005
Revises: 0004
Created: 2026-12-07 04:30:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'works',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('external_id', sa.String(length=32), nullable=False),
        sa.Column('title', sa.String(length=1024), nullable=False),
        sa.Column('owner', sa.String(length=512), nullable=False),
        sa.Column('rights', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('external_id'),
    )
    if op.get_bind().dialect.name == 'sqlite':
        # in place: alembic's batch mode would copy the table, and dropping the old one would
        # cascade to every track's fingerprints
        op.execute('ALTER TABLE tracks ADD COLUMN work_key INTEGER REFERENCES works (id)')
    else:
        op.add_column('tracks', sa.Column('work_key', sa.Integer(), sa.ForeignKey('works.id'), nullable=True))
    op.create_index('ix_tracks_work_key', 'tracks', ['work_key'])


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':      # see upgrade: a table copy would lose the fingerprints
        raise NotImplementedError('an SQLite catalog is not downgraded past 0005: restore a copy made before it')
    op.drop_index('ix_tracks_work_key', 'tracks')
    op.drop_column('tracks', 'work_key')
    op.drop_table('works')
