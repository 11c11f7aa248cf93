"""The SQL ledger of record (the adapter only): schema, migrations, double-entry transfers, the
unit of work (``SqlLedger.unit``). The processes that move data between the store and the ledger
(drain, reconcile, rebuild) live in ``tally.sync``.

Errors raised here belong to tally's one tree (``tally.errors``), plus a usage refusal defined
next to the code that raises it: ``AlreadyInitialised`` (init on an initialised ledger).
"""
