"""flows and findings

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# same variant as schema.BigId: INTEGER PRIMARY KEY is SQLite's rowid alias
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("sensor", sa.String(16), nullable=False),
        sa.Column("node", sa.String(64)),
        sa.Column("stage", sa.String(16)),
        sa.Column("client_addr", sa.String(45)),
        sa.Column("client_port", sa.Integer),
        sa.Column("client_app", sa.String(256)),
        sa.Column("client_process", sa.String(128)),
        sa.Column("client_pid", sa.Integer),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("dst_addr", sa.String(45)),
        sa.Column("dst_port", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("sni", sa.String(255)),
        sa.Column("http_host", sa.String(255)),
        sa.Column("dns_name", sa.String(255)),
        sa.Column("method", sa.String(16)),
        sa.Column("path", sa.String(2048)),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("asn", sa.BigInteger),
        sa.Column("as_org", sa.String(255)),
        sa.Column("geo_source", sa.String(16), nullable=False),
        sa.Column("geo_label", sa.String(64)),
        sa.Column("service_id", sa.String(64)),
        sa.Column("service_name", sa.String(128)),
        sa.Column("service_match", sa.String(16)),
        sa.Column("operator", sa.String(128)),
        sa.Column("operator_country", sa.String(2)),
        sa.Column("payload_types", sa.String(255), nullable=False),
        sa.Column("flags", sa.String(255), nullable=False),
        sa.Column("findings", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("rule", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("duration", sa.Float),
        sa.Column("status", sa.String(32)),
        sa.Column("closed_ts", sa.Float),
        sa.Column("elapsed", sa.Float),
    )
    op.create_index("ux_flows_decision_id", "flows", ["decision_id"], unique=True)
    op.create_index("ix_flows_flow", "flows", ["flow_id", "sensor"])
    op.create_index("ix_flows_ts", "flows", ["ts"])

    op.create_table(
        "findings",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("sensor", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("redacted", sa.String(256), nullable=False),
        sa.Column("where", sa.String(64)),
        sa.Column("detail", sa.String(64)),
        sa.Column("service_id", sa.String(64)),
        sa.Column("country", sa.String(2), nullable=False),
    )
    op.create_index("ux_findings_decision_seq", "findings", ["decision_id", "seq"], unique=True)
    op.create_index("ix_findings_ts", "findings", ["ts"])


def downgrade() -> None:
    op.drop_table("findings")
    op.drop_table("flows")
