"""The one exception tree of tally. Third-party errors are translated at the adapter boundary
(``raise ... from exc``); business refusals are result codes, never exceptions.

    TallyError
    ├── UsageError                  bad input from a caller (CLI, API, config): fix the input
    │   ├── InvalidAmount
    │   ├── InvalidId
    │   └── UnknownCurrency
    ├── ConfigError                 a config file or setting is wrong: fix the config
    └── InfrastructureError         something outside tally's control is unhealthy: retry later
        ├── StoreError              the Redis balance store
        │   ├── StoreUnavailable    cannot connect / timed out
        │   │   └── StoreOutcomeUnknown  the connection broke after sending: retry, same ids
        │   ├── StoreReadOnly       the node answered READONLY (a replica, or demoted primary)
        │   ├── StoreLoading        the node is still loading its dataset
        │   ├── StoreLost           the dataset is empty or foreign (epoch missing or wrong)
        │   ├── StoreNotEnoughReplicas  min-replicas-to-write not met: the primary refuses writes
        │   └── StoreBackpressure   the journal backlog is at its bound (drainer behind)
        ├── LedgerError             the SQL ledger of record
        │   └── LedgerNotInitialised
        └── ProcessError            a redis-server (or other child process) failed to start/stop

    AssertionError
    └── InvariantViolation          an impossible state: a bug; not a TallyError, so no
                                    ``except TallyError`` catches it and no exit code hides it

Modules add leaves next to the code that raises them (e.g. ``RebuildRefused(UsageError)``).
"""

from __future__ import annotations


class TallyError(Exception):
    """Base of every error tally raises on purpose."""

    #: What the operator should do about it, shown by the CLI and the API.
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class UsageError(TallyError):
    hint = "check the arguments"


class InvalidAmount(UsageError):
    hint = "amounts are positive decimals in the account's currency, e.g. 12.34"


class InvalidId(UsageError):
    hint = "ids are 1-64 of letters, digits, '_', '-', '.', ':', starting with a letter or digit"


class UnknownCurrency(UsageError):
    hint = "use an ISO 4217 code tally knows, e.g. USD, EUR, JPY"


class ConfigError(TallyError):
    hint = "fix the configuration"


class InfrastructureError(TallyError):
    hint = "retry later; nothing was changed unless the result says so"


class StoreError(InfrastructureError):
    pass


class StoreUnavailable(StoreError):
    hint = "check that the Redis primary is running and reachable"


class StoreReadOnly(StoreError):
    hint = "the node is a read-only replica: point tally at the primary (Sentinel), or promote one"


class StoreLoading(StoreError):
    hint = "Redis is loading its dataset; retry when it is done"


class StoreLost(StoreError):
    code_name = "store_lost"
    hint = (
        "the Redis dataset is empty or belongs to another ledger: nothing was written; "
        "run `tally rebuild` to restore it from the ledger of record"
    )


class StoreNotEnoughReplicas(StoreError):
    hint = "the primary has too few replicas in sync to accept writes; check replication"


class StoreOutcomeUnknown(StoreUnavailable):
    hint = (
        "the request may or may not have been applied: retry with the SAME transfer ids, "
        "a replay returns the first outcome and never moves money twice"
    )


class StoreBackpressure(StoreError):
    hint = "the journal backlog is full: start or fix the drainer (`tally drain`)"


class LedgerError(InfrastructureError):
    hint = "check the ledger database URL and that the database is reachable"


class LedgerNotInitialised(LedgerError):
    hint = "run `tally init` to create the ledger schema and the store epoch"


class ProcessError(InfrastructureError):
    hint = "see the process log named in the message"


class InvariantViolation(AssertionError):
    """An impossible state. Never caught by tally: it means a bug, and crashing is safest. An
    AssertionError (as TigerBeetle's Python client does), not a TallyError: handlers that turn
    tally's errors into exit codes or HTTP answers must not catch it."""
