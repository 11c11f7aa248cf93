"""The SQL ledger of record: double-entry transfers, the drainer, reconcile and rebuild."""
