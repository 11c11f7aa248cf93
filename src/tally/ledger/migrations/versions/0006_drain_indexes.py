"""Drop ``ix_transfers_debit_account`` and ``ix_transfers_credit_account``: one side of each is a
system account (every debit credits ``@usage_revenue:<cur>``, every credit debits a clearing
account), so each drained line added an entry under one hot key to each, and maintaining them
was a large share of the drainer's time in PostgreSQL. Customer balances now sum over
``ix_transfers_account_ts`` (``account_id`` is the customer side of every transfer); system
accounts' balances and pages scan ``transfers`` (``sql_balances``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_transfers_debit_account", table_name="transfers")
    op.drop_index("ix_transfers_credit_account", table_name="transfers")


def downgrade() -> None:
    op.create_index("ix_transfers_debit_account", "transfers", ["debit_account_id", "result"])
    op.create_index("ix_transfers_credit_account", "transfers", ["credit_account_id", "result"])
