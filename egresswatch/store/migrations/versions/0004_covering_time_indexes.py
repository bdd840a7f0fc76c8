"""covering time indexes for the report

``egresswatch report --since 24h`` groups the period's flows by service,
country, payload type and verdict, and ranks clients. With an index on ts
alone every flow of the period was also read from the table (~550 bytes a
row); these indexes carry the grouped columns, so SQLite and PostgreSQL
answer from the index only (bench/store.py: several times faster at 1M
flows). Rows arrive in time order, so the index grows at its right edge and
costs little on insert. They replace the plain ts indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: keep in step with schema.FLOWS_REPORT_COLUMNS
FLOWS_REPORT_COLUMNS = [
    "ts",
    "verdict",
    "country",
    "service_id",
    "payload_types",
    "operator_country",
    "client_addr",
    "sensor",
    "bytes_out",
    "bytes_in",
    "service_name",
]


def upgrade() -> None:
    op.create_index("ix_flows_ts_report", "flows", FLOWS_REPORT_COLUMNS)
    op.drop_index("ix_flows_ts", table_name="flows")
    op.create_index("ix_findings_ts_kind", "findings", ["ts", "kind", "sensor", "decision_id"])
    op.drop_index("ix_findings_ts", table_name="findings")


def downgrade() -> None:
    op.create_index("ix_findings_ts", "findings", ["ts"])
    op.drop_index("ix_findings_ts_kind", table_name="findings")
    op.create_index("ix_flows_ts", "flows", ["ts"])
    op.drop_index("ix_flows_ts_report", table_name="flows")
