"""Auto-recharge: rules, recharges (the saga's recovery points), freeze switch, account status
events (suspensions and reinstatements) and remediation actions.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Spelled out here (not imported from schema.py) so this migration never changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = 80
ST = 16
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _recharge_rules() -> None:
    op.create_table(
        "recharge_rules",
        sa.Column("account_id", sa.String(ID), primary_key=True),
        sa.Column("card_id", sa.String(ID), nullable=False),
        sa.Column("threshold_minor", sa.BigInteger, nullable=False),
        sa.Column("target_minor", sa.BigInteger, nullable=True),
        sa.Column("fixed_minor", sa.BigInteger, nullable=True),
        sa.Column("daily_cap_minor", sa.BigInteger, nullable=False),
        sa.Column("declines_max", sa.Integer, nullable=False),
        sa.Column("consecutive_declines", sa.Integer, nullable=False),
        sa.Column("autopay", sa.String(ST), nullable=False),
        sa.Column("disabled_reason", sa.String(ID), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("autopay IN ('enabled', 'disabled')", name="ck_recharge_rules_autopay"),
        sa.CheckConstraint(
            "(target_minor IS NULL) <> (fixed_minor IS NULL)", name="ck_recharge_rules_amount"
        ),
        sa.CheckConstraint("daily_cap_minor > 0", name="ck_recharge_rules_cap"),
        sa.CheckConstraint("declines_max >= 1", name="ck_recharge_rules_declines"),
    )


def _recharges() -> None:
    op.create_table(
        "recharges",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("account_id", sa.String(ID), nullable=False),
        # Equal to account_id while the recharge is open, NULL once finished: UNIQUE makes
        # "one open recharge per account" a database rule (NULLs never collide).
        sa.Column("open_account_id", sa.String(ID), nullable=True, unique=True),
        sa.Column("opened_by", sa.String(ID), nullable=True),
        sa.Column("balance_at_open_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("phase", sa.String(ST), nullable=False),
        sa.Column("card_id", sa.String(ID), nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=True),
        sa.Column("charge_id", sa.String(ID), nullable=True),
        sa.Column("outcome_reason", sa.String(ID), nullable=True),
        sa.Column("wait_reason", sa.String(ID), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("opened_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("charged_at_ms", sa.BigInteger, nullable=True),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "phase IN ('opened', 'intent', 'charge_unknown', 'charged', 'credited', "
            "'succeeded', 'declined', 'skipped')",
            name="ck_recharges_phase",
        ),
        sa.CheckConstraint("amount_minor IS NULL OR amount_minor > 0", name="ck_recharges_amount"),
    )
    op.create_index("ix_recharges_phase_updated", "recharges", ["phase", "updated_at_ms"])
    op.create_index("ix_recharges_account_charged", "recharges", ["account_id", "charged_at_ms"])
    op.create_index("ix_recharges_charge", "recharges", ["charge_id"])
    op.create_index("ix_recharges_unfinished", "recharges", ["finished_at_ms", "updated_at_ms"])


def _billing_freeze() -> None:
    op.create_table(
        "billing_freeze",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("frozen", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(ID), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )


def _account_events() -> None:
    op.create_table(
        "account_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("action", sa.String(ST), nullable=False),
        sa.Column("cause", sa.String(ID), nullable=False),
        sa.Column("recharge_id", sa.String(ID), nullable=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "action IN ('suspended', 'reinstated')", name="ck_account_events_action"
        ),
    )
    op.create_index("ix_account_events_account", "account_events", ["account_id", "id"])


def _remediations() -> None:
    op.create_table(
        "remediations",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("kind", sa.String(ST), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=True),
        sa.Column("charge_id", sa.String(ID), nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("state", sa.String(ST), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "kind IN ('credit', 'refund', 'reinstate')", name="ck_remediations_kind"
        ),
        sa.CheckConstraint("state IN ('pending', 'done')", name="ck_remediations_state"),
    )


def upgrade() -> None:
    _recharge_rules()
    _recharges()
    _billing_freeze()
    _account_events()
    _remediations()


def downgrade() -> None:
    for table in (
        "remediations",
        "account_events",
        "billing_freeze",
        "recharges",
        "recharge_rules",
    ):
        op.drop_table(table)
