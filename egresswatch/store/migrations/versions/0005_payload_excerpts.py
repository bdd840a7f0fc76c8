"""payload excerpts: opt-in raw request bodies

Issue #8 and DESIGN.md: raw bodies are stored only when the user opts in
(``store.raw_bodies``), capped in size and with their own retention. The
table is empty unless that setting is above zero; nothing existing changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: as schema.BigId: SQLite's INTEGER PRIMARY KEY is the rowid
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "payload_excerpts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("sensor", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("content_type", sa.String(128)),
        sa.Column("content_encoding", sa.String(64)),
    )
    op.create_index(
        "ux_payload_excerpts_decision_id", "payload_excerpts", ["decision_id"], unique=True
    )
    op.create_index("ix_payload_excerpts_ts", "payload_excerpts", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_payload_excerpts_ts", table_name="payload_excerpts")
    op.drop_index("ux_payload_excerpts_decision_id", table_name="payload_excerpts")
    op.drop_table("payload_excerpts")
