"""tally as a running service: the composition of store, ledger, background workers, the gateway
simulator (dev) and the HTTP API, started and stopped in order (``tally serve``)."""
