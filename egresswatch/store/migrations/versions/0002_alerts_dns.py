"""alerts and DNS answers

The alert sinks and the sniffer's DNS cache came after flows and findings; a
separate revision keeps a database created with 0001 upgradable in place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("last_ts", sa.Float, nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("decision_id", sa.String(64)),
        sa.Column("sensor", sa.String(16)),
        sa.Column("client_addr", sa.String(45)),
        sa.Column("service_id", sa.String(64)),
        sa.Column("country", sa.String(2)),
        sa.Column("summary", sa.Text),
        sa.Column("sink", sa.String(32)),
        sa.Column("delivery_state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_ts", sa.Float),
    )
    op.create_index("ix_alerts_ts", "alerts", ["ts"])
    op.create_index("ix_alerts_rule_ts", "alerts", ["rule", "ts"])
    op.create_index("ix_alerts_state", "alerts", ["delivery_state"])

    op.create_table(
        "dns_answers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("sensor", sa.String(16), nullable=False),
        sa.Column("node", sa.String(64)),
        sa.Column("client_addr", sa.String(45)),
        sa.Column("qname", sa.String(255), nullable=False),
        sa.Column("rtype", sa.String(16), nullable=False),
        sa.Column("answer", sa.String(255), nullable=False),
        sa.Column("ttl", sa.Integer),
    )
    op.create_index("ix_dns_answer_ts", "dns_answers", ["answer", "ts"])
    op.create_index("ix_dns_qname", "dns_answers", ["qname"])
    op.create_index("ix_dns_ts", "dns_answers", ["ts"])


def downgrade() -> None:
    op.drop_table("dns_answers")
    op.drop_table("alerts")
