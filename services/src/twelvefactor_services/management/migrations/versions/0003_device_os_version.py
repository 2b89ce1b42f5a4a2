"""The version each device runs, as a column (issue 15: GET /devices filters and counts by
it in SQL, a page at a time, instead of reading every device's last health report).

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("os_version", sa.Text, nullable=True))
    # Filled from the health reports kept (Python, not each engine's JSON functions: one
    # rule, the registry's: a version is a string, anything else is none).
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, health FROM devices WHERE health IS NOT NULL"))
    for device, health in rows.fetchall():
        try:
            version = json.loads(health).get("os_version")
        except (ValueError, AttributeError):
            continue
        if isinstance(version, str):
            conn.execute(
                sa.text("UPDATE devices SET os_version = :v WHERE id = :id"),
                {"v": version, "id": device},
            )


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("os_version")
