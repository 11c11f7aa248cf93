"""``shard_epochs``: each logical shard's own epoch inside the deployment epoch, written by a
one-shard rebuild on a Redis Cluster (``tally rebuild --shard K``). No row: the shard is at the
deployment epoch (``epochs``), which is every shard of a ledger migrated from 0006.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Spelled out here (not imported from schema.py) so this migration never changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = 80
ST = 16


def upgrade() -> None:
    op.create_table(
        "shard_epochs",
        sa.Column("shard_epoch_id", sa.String(ID), primary_key=True),
        sa.Column("epoch_id", sa.String(ID), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("status", sa.String(ST), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint(
            "status IN ('building', 'current', 'retired')", name="ck_shard_epochs_status"
        ),
        sa.CheckConstraint("shard >= 0", name="ck_shard_epochs_shard"),
    )
    for status in ("current", "building"):
        op.create_index(
            f"uq_shard_epochs_one_{status}",
            "shard_epochs",
            ["epoch_id", "shard"],
            unique=True,
            sqlite_where=sa.text(f"status = '{status}'"),
            postgresql_where=sa.text(f"status = '{status}'"),
        )


def downgrade() -> None:
    op.drop_index("uq_shard_epochs_one_building", table_name="shard_epochs")
    op.drop_index("uq_shard_epochs_one_current", table_name="shard_epochs")
    op.drop_table("shard_epochs")
