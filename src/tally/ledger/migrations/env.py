"""Alembic environment: the caller passes an open connection through ``config.attributes``."""

from __future__ import annotations

from alembic import context

from tally.ledger.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "tally migrations run through tally.ledger.migrate.upgrade(), not alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
