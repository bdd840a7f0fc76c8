"""flows: drop the (flow_id, sensor) index

The writer now finds a closed flow's rows by their unique decision_id (it
remembers the decision ids of the flows it wrote), and an index on a second
random key halved SQLite's insert rate (bench/store.py). Only an index goes;
no recorded data changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_flows_flow", table_name="flows")


def downgrade() -> None:
    op.create_index("ix_flows_flow", "flows", ["flow_id", "sensor"])
