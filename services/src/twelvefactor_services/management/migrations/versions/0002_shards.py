"""Hub shards (issue 15): the shard a device belongs to, as its enrolment assigned it and
as its last connect showed it, and the shard of each tunnel peer.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("devices", "enrolments", "tunnel_peers")


def upgrade() -> None:
    for table in TABLES:  # NULL: a fleet of one shard, or made before shards
        op.add_column(table, sa.Column("shard", sa.Text, nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("shard")
