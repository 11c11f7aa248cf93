"""The SQL ledger of record: double-entry transfers, the drainer, reconcile and rebuild.

Errors raised here belong to tally's one tree (``tally.errors``), plus two usage refusals defined
next to the code that raises them: ``AlreadyInitialised`` (init on an initialised ledger) and
``RebuildRefused`` (rebuild onto a dataset that is healthy or foreign, without ``force``).
"""
