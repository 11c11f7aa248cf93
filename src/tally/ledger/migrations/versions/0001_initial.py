"""Initial ledger schema: epochs, accounts, transfers, credit intents, journal conflicts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Spelled out here (not imported from schema.py) so this migration never changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 80
ST = 16
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _epochs() -> None:
    op.create_table(
        "epochs",
        sa.Column("epoch_id", sa.String(ID), primary_key=True),
        sa.Column("namespace", sa.String(ID), nullable=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(ST), nullable=False),
        sa.Column("status", sa.String(ST), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint("kind IN ('init', 'rebuild')", name="ck_epochs_kind"),
        sa.CheckConstraint("status IN ('building', 'current', 'retired')", name="ck_epochs_status"),
    )
    for status in ("current", "building"):
        where = sa.text(f"status = '{status}'")
        op.create_index(
            f"uq_epochs_one_{status}",
            "epochs",
            ["status"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )


def _accounts() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("credit_limit_minor", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(ST), nullable=False),
        sa.Column("kind", sa.String(ST), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'closed')", name="ck_accounts_status"
        ),
        sa.CheckConstraint("kind IN ('customer', 'system')", name="ck_accounts_kind"),
        sa.CheckConstraint("credit_limit_minor >= 0", name="ck_accounts_limit"),
    )


def _transfers() -> None:
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("kind", sa.String(ST), nullable=False),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("debit_account_id", sa.String(ID), nullable=False),
        sa.Column("credit_account_id", sa.String(ID), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("result", sa.Integer, nullable=False),
        sa.Column("balance_after_minor", sa.BigInteger, nullable=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("epoch_id", sa.String(ID), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("stream_ms", sa.BigInteger, nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("drained_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("kind IN ('debit', 'credit')", name="ck_transfers_kind"),
        sa.CheckConstraint("amount_minor > 0", name="ck_transfers_amount"),
    )
    op.create_index("ix_transfers_account_ts", "transfers", ["account_id", "ts_ms", "id"])
    op.create_index("ix_transfers_debit_account", "transfers", ["debit_account_id", "result"])
    op.create_index("ix_transfers_credit_account", "transfers", ["credit_account_id", "result"])
    op.create_index(
        "ix_transfers_position", "transfers", ["epoch_id", "shard", "stream_ms", "stream_seq"]
    )


def _credit_intents() -> None:
    op.create_table(
        "credit_intents",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("account_id", sa.String(ID), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("source", sa.String(ST * 2), nullable=False),
        sa.Column("state", sa.String(ST), nullable=False),
        sa.Column("result", sa.Integer, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("settled_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint("state IN ('pending', 'settled')", name="ck_credit_intents_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_credit_intents_amount"),
    )
    op.create_index("ix_credit_intents_state_created", "credit_intents", ["state", "created_at_ms"])
    op.create_index("ix_credit_intents_account", "credit_intents", ["account_id"])


def _journal_conflicts() -> None:
    op.create_table(
        "journal_conflicts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("reason", sa.String(ST * 2), nullable=False),
        sa.Column("transfer_id", sa.String(ID), nullable=True),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("epoch_id", sa.String(ID), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("stream_ms", sa.BigInteger, nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("detected_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "epoch_id",
            "shard",
            "stream_ms",
            "stream_seq",
            "line_no",
            name="uq_journal_conflicts_pos",
        ),
    )


def upgrade() -> None:
    _epochs()
    _accounts()
    _transfers()
    _credit_intents()
    _journal_conflicts()


def downgrade() -> None:
    for table in ("journal_conflicts", "credit_intents", "transfers", "accounts", "epochs"):
        op.drop_table(table)
