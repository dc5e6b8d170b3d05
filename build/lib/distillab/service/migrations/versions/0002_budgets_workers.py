"""Job budgets and device time, model data sets, and the workers table.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("options", sa.JSON, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("device_seconds", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("stop_reason", sa.Text))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("dataset", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("jobs_done", sa.Integer, nullable=False),
        sa.Column("stopped_at", TIMESTAMP),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("dataset")
    with op.batch_alter_table("jobs") as batch:
        for column in ("stop_reason", "device_seconds", "options"):
            batch.drop_column(column)
