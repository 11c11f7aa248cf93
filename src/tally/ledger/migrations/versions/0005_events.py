"""Events for dependents: the transactional outbox (``events``), low-balance alerts, webhook
endpoints and their deliveries.

Revision ID: 0005
Revises: 0004 (holds; 0004 and 0005 were written side by side)
Create Date: 2026-12-04

Spelled out here (not imported from sql_outbox.py / sql_webhooks.py) so this migration never
changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Registers the tables on ``schema.metadata`` (they are defined beside their queries), so the
# schema-vs-migrations comparison sees them in every process that migrated.
import tally.ledger.sql_outbox
import tally.ledger.sql_webhooks  # noqa: F401

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = 80
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("account_id", sa.String(ID), nullable=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("source", name="uq_events_source"),
    )
    op.create_index("ix_events_type", "events", ["type", "id"])
    op.create_table(
        "balance_alerts",
        sa.Column("account_id", sa.String(ID), primary_key=True),
        sa.Column("threshold_minor", sa.BigInteger, nullable=False),
        sa.Column("below", sa.Boolean, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("event_types", sa.Text, nullable=True),
        sa.Column("fanned_through", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("deleted_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("endpoint_id", "event_seq", name="uq_webhook_deliveries_event"),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'dead')", name="ck_webhook_deliveries_state"
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_queue",
        "webhook_deliveries",
        ["endpoint_id", "state", "event_seq"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_queue", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("balance_alerts")
    op.drop_index("ix_events_type", table_name="events")
    op.drop_table("events")
