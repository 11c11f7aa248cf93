"""API keys for the HTTP service: only a SHA-256 of each key is stored, never the key.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Spelled out here (not imported from sql_api_keys.py) so this migration never changes after release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Registers the ``api_keys`` table on ``schema.metadata`` (it is defined beside its queries, not in
# schema.py), so the schema-vs-migrations comparison sees it in every process that migrated.
# The DDL below stays spelled out; this import only names the table.
import tally.ledger.sql_api_keys  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = 80
ST = 16


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(ID), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(ST), nullable=False),
        sa.Column("label", sa.String(ID), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger, nullable=True),
        sa.CheckConstraint("scope IN ('admin', 'service')", name="ck_api_keys_scope"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
