"""Balance holds: ``holds`` (one row per hold, its state) and ``hold_events`` (its life: placed,
captured, voided, expired, each at most once per hold).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Spelled out here (not imported from sql_holds.py) so this migration never changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Registers ``holds`` and ``hold_events`` on ``schema.metadata`` (they are defined beside their
# queries), so the schema-vs-migrations comparison sees them. The DDL below stays spelled out.
import tally.ledger.sql_holds  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = 80
ST = 16
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(ID), primary_key=True),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("expires_in_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(ST), nullable=False),
        sa.Column("place_result", sa.Integer, nullable=False),
        sa.Column("captured_minor", sa.BigInteger, nullable=True),
        sa.Column("capture_transfer_id", sa.String(ID), nullable=True),
        sa.Column("placed_at_ms", sa.BigInteger, nullable=False),
        sa.Column("closed_at_ms", sa.BigInteger, nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'captured', 'voided', 'expired', 'refused')",
            name="ck_holds_status",
        ),
        sa.CheckConstraint("amount_minor > 0", name="ck_holds_amount"),
    )
    op.create_index("ix_holds_account_status", "holds", ["account_id", "status"])
    op.create_table(
        "hold_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("hold_id", sa.String(ID), nullable=False),
        sa.Column("event", sa.String(ST), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("result", sa.Integer, nullable=False),
        sa.Column("balance_after_minor", sa.BigInteger, nullable=True),
        sa.Column("held_after_minor", sa.BigInteger, nullable=True),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("epoch_id", sa.String(ID), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("stream_ms", sa.BigInteger, nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("drained_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "event IN ('placed', 'captured', 'voided', 'expired')", name="ck_hold_events_event"
        ),
        sa.UniqueConstraint("hold_id", "event", name="uq_hold_events_hold_event"),
    )
    op.create_index("ix_hold_events_account", "hold_events", ["account_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_hold_events_account", table_name="hold_events")
    op.drop_table("hold_events")
    op.drop_index("ix_holds_account_status", table_name="holds")
    op.drop_table("holds")
