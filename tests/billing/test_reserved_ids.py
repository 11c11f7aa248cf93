"""Transfer ids of the form tally derives for its own transfers (a recharge's credit ``rc-`` +
29 hex, a hold capture's debit ``hc-`` + 29 hex) are refused from callers: taken first by a
caller, they would turn tally's own credit or capture into a conflicting replay."""

from __future__ import annotations

import pytest

from tally.bootstrap import Deployment
from tally.domain.accounts import Account, SystemAccount
from tally.domain.holds import capture_transfer_id
from tally.domain.results import Result
from tally.domain.rules import recharge_id_for
from tally.errors import InvalidId

RECHARGE_ID = recharge_id_for("usage-7")
CAPTURE_ID = capture_transfer_id("hold-7")


def test_the_reserved_ids_are_exactly_what_tally_derives() -> None:
    assert RECHARGE_ID.startswith("rc-") and len(RECHARGE_ID) == 32
    assert CAPTURE_ID.startswith("hc-") and len(CAPTURE_ID) == 32


def test_without_the_check_a_caller_debit_under_a_recharge_id_turns_its_credit_into_a_conflict(
    dep: Deployment,
) -> None:
    """The failure the check prevents: the store itself takes any id (the debit below goes in
    as a raw transfer, the way a caller's debit would without the check), and the recharge's
    credit for that id then conflicts, which the saga treats as an invariant violation."""
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    eng.credit("fund-1", "alice", 1000, "USD")
    taken = eng.store.apply([(RECHARGE_ID, "d", "alice", 5, "USD", None)]).results[0]
    assert taken.result is Result.ok
    out = eng.credit(RECHARGE_ID, "alice", 500, "USD", SystemAccount.card_clearing, system=True)
    assert out.result is not None and out.result.is_replay_conflict


@pytest.mark.parametrize("tid", [RECHARGE_ID, CAPTURE_ID])
def test_a_caller_cannot_use_a_reserved_id(dep: Deployment, tid: str) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    eng.credit("fund-1", "alice", 1000, "USD")
    intents = dep.ledger.count_unsettled_credit_intents()
    with pytest.raises(InvalidId, match="reserves"):
        eng.debit(tid, "alice", 5)
    with pytest.raises(InvalidId, match="reserves"):
        eng.debit_many([("ok-1", "alice", 5), (tid, "alice", 5)])
    with pytest.raises(InvalidId, match="reserves"):
        eng.credit(tid, "alice", 5, "USD", SystemAccount.card_clearing)
    assert eng.account("alice").balance_minor == 1000  # type: ignore[union-attr]
    assert dep.ledger.count_unsettled_credit_intents() == intents  # no intent recorded first


def test_ids_that_only_start_like_a_reserved_one_stay_the_callers(dep: Deployment) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    eng.credit("rc-plain-topup", "alice", 1000, "USD")
    assert eng.debit("hc-" + "0" * 28, "alice", 5).result is Result.ok  # 31 long: not reserved
    assert eng.debit("rc-" + "G" * 29, "alice", 5).result is Result.ok  # not lowercase hex
    assert eng.debit(RECHARGE_ID.upper(), "alice", 5).result is Result.ok


def test_tallys_own_recharge_credit_still_applies(dep: Deployment) -> None:
    eng = dep.engine
    eng.create_account(Account("alice", "USD"))
    out = eng.credit(RECHARGE_ID, "alice", 500, "USD", SystemAccount.card_clearing, system=True)
    assert out.result is Result.ok and out.balance_minor == 500
