"""Processes that move data between the store and the ledger: drain, reconcile, rebuild."""
