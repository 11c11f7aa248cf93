"""Result codes: stable integers, like TigerBeetle's CreateTransferResult.

Expected outcomes are codes. Never renumber: the values are stored in the ledger and journal.
"""

from __future__ import annotations

from enum import IntEnum


class Result(IntEnum):
    ok = 0
    exists = 1
    exists_with_different_amount = 2
    exists_with_different_account = 3
    exists_with_different_kind = 4
    exists_with_different_currency = 5
    exists_with_different_credit_limit = 6
    insufficient_funds = 7
    account_not_found = 8
    account_not_active = 9
    currency_mismatch = 10
    amount_invalid = 11
    balance_limit_exceeded = 12
    id_invalid = 13
    store_lost = 14
    # The idempotency window's age guard (README): refused, nothing written, no record, no
    # journal line. Numbered apart so codes other extensions add can take 15.. in order.
    occurred_outside_window = 30
    occurred_in_future = 31

    @property
    def is_success(self) -> bool:
        return self in (Result.ok, Result.exists)

    @property
    def is_replay_conflict(self) -> bool:
        return self.name.startswith("exists_with_different_")


#: Codes a transfer can end with and that are stored with its id (replays return them).
RECORDED_TRANSFER_RESULTS = frozenset(
    {
        Result.ok,
        Result.insufficient_funds,
        Result.account_not_found,
        Result.account_not_active,
        Result.currency_mismatch,
        Result.balance_limit_exceeded,
    }
)
