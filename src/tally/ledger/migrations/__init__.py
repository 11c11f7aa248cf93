"""Alembic migrations of the ledger schema, run programmatically by ``tally.ledger.migrate``."""
