"""The batch path's inlined checks refuse exactly what the single-transfer checks refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.billing.validate import raw_transfer, raw_transfers
from tally.errors import UsageError

junk = st.one_of(
    st.text(max_size=70),
    st.integers(),
    st.none(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=5),
)


@given(
    tid=junk,
    aid=junk,
    amount=junk,
    currency=st.one_of(st.just(""), st.sampled_from(["USD", "XXX"]), junk),
)
def test_batch_and_single_validation_agree_on_any_input(tid, aid, amount, currency) -> None:  # type: ignore[no-untyped-def]
    try:
        single = raw_transfer("d", tid, aid, amount, currency)
    except UsageError:
        single = None
    try:
        batch = raw_transfers("d", [("ok-1", "acct", 1), (tid, aid, amount, currency)])[1]
    except UsageError as exc:
        assert "item 1" in str(exc)
        batch = None
    assert batch == single


@pytest.mark.parametrize("bad", [("t", "a"), ("t", "a", 1, "USD", "x")])
def test_a_batch_item_of_the_wrong_shape_is_refused(bad: tuple[object, ...]) -> None:
    with pytest.raises(UsageError, match="item 0"):
        raw_transfers("d", [bad])
