"""Deduplication per (device, queue_id, seq), the receivers' outbox, the dead letters
and the delivery leases: the schema SQLite files knew as user_version 1.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL; SQLite's rowid alias must be spelt INTEGER
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),  # the device's queue file
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_ts", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("device", "queue_id", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("receiver", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("receiver", "device", "queue_id", "seq"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", ID, primary_key=True, autoincrement=False),  # the outbox row's
        sa.Column("receiver", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("set_aside", sa.Float, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("receiver", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "dead_letters", "outbox", "messages"):
        op.drop_table(table)
