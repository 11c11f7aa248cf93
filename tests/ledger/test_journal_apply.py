from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.domain.accounts import Account, SystemAccount
from tally.domain.results import Result
from tally.domain.transfers import Transfer, TransferKind
from tally.errors import StoreLost, UsageError
from tally.ledger.journal import (
    MalformedLine,
    format_line,
    parse_entry,
    parse_entry_into,
    parse_line,
)
from tally.ledger.models import (
    DrainedLine,
    IntentState,
    JournalLine,
    LineBatch,
    Position,
    StreamId,
)
from tally.ledger.schema import journal_conflicts
from tally.ledger.sql_ledger import SqlLedger

EPOCH_NS = "tally"


def line(
    tid: str,
    kind: str,
    account: str,
    amount: int,
    result: Result = Result.ok,
    currency: str = "USD",
    balance: int | None = 0,
) -> JournalLine:
    return JournalLine(
        tid,
        TransferKind.from_code(kind),
        account,
        amount,
        currency,
        result,
        balance,
        1_700_000_000_000,
    )


def at(epoch_id: str, seq: int, ln: JournalLine, shard: int = 0, no: int = 0) -> DrainedLine:
    return DrainedLine(ln, Position(epoch_id, shard, StreamId(1_700_000_000_000, seq), no))


def test_journal_lines_round_trip_and_malformed_ones_are_refused() -> None:
    ln = line("t1", "d", "acme", 250, Result.insufficient_funds, balance=None)
    assert parse_line(format_line(ln)) == ln
    text = "t1|d|acme|250|USD|0|-5|1700000000000"
    assert parse_line(text).balance_after_minor == -5
    for bad in (
        "t1|d|acme|250|USD|0|",
        "t1|x|acme|250|USD|0||1",
        "t1|d|acme|0|USD|0||1",
        "t1|d|acme|25|XXX|0||1",
        "t1|d|acme|25|USD|99||1",
        "t 1|d|a|25|USD|0||1",
    ):
        with pytest.raises(MalformedLine):
            parse_line(bad)


def test_applying_the_same_lines_twice_stores_each_once(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.create_account(Account("acme", "USD"))
    batch = [
        at(epoch.epoch_id, 1, line("c1", "c", "acme", 1000)),
        at(epoch.epoch_id, 2, line("d1", "d", "acme", 300)),
        at(epoch.epoch_id, 3, line("d2", "d", "acme", 5000, Result.insufficient_funds)),
    ]
    first = ledger.apply_journal(batch)
    again = ledger.apply_journal(batch)
    assert (first.inserted, first.duplicates) == (3, 0)
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 3, 0)
    assert ledger.balance_of("acme") == 700
    assert ledger.balance_of("@usage_revenue:USD") == 300
    assert ledger.balance_of("@card_clearing:USD") == -1000
    assert ledger.conservation() == {"USD": 0}
    page = ledger.transfers_page("acme", limit=10)
    assert [t.id for t in page.items] == ["c1", "d1", "d2"]
    assert page.items[2].result is Result.insufficient_funds


def test_a_reused_id_with_other_parameters_is_recorded_never_applied(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.apply_journal([at(epoch.epoch_id, 1, line("t", "c", "acme", 100))])
    report = ledger.apply_journal([at(epoch.epoch_id, 2, line("t", "c", "acme", 999))])
    assert (report.inserted, report.conflicts) == (0, 1)
    ledger.apply_journal([at(epoch.epoch_id, 2, line("t", "c", "acme", 999))])  # redelivered
    assert ledger.journal_conflicts_count() == 1
    assert ledger.balance_of("acme") == 100


def test_lines_of_another_epoch_are_recorded_as_foreign_and_not_applied(
    ledger: SqlLedger,
) -> None:
    ledger.init_epoch(EPOCH_NS, 4)
    report = ledger.apply_journal([at("ep-other", 1, line("t", "c", "acme", 100))])
    assert (report.inserted, report.foreign) == (0, 1)
    assert ledger.balance_of("acme") == 0 and ledger.journal_conflicts_count() == 1


def test_nothing_is_applied_while_a_rebuild_is_in_progress(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.begin_rebuild(EPOCH_NS, 4)
    with pytest.raises(StoreLost):
        ledger.apply_journal([at(epoch.epoch_id, 1, line("t", "c", "acme", 100))])
    assert ledger.count_transfers() == 0


def test_a_fault_before_commit_leaves_the_ledger_untouched(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)

    def boom() -> None:
        raise KeyboardInterrupt("crash before commit")

    with pytest.raises(KeyboardInterrupt):
        ledger.apply_journal([at(epoch.epoch_id, 1, line("t", "c", "a", 5))], before_commit=boom)
    assert ledger.count_transfers() == 0


def test_credit_intent_replays_and_conflicts(ledger: SqlLedger) -> None:
    credit = Transfer("r1", TransferKind.credit, "acme", 500, "USD")
    first = ledger.record_credit_intent(credit, SystemAccount.card_clearing)
    assert first.result is Result.ok and first.conflict is None
    assert first.intent is not None and first.intent.state is IntentState.pending
    again = ledger.record_credit_intent(credit, SystemAccount.card_clearing)
    assert again.result is Result.exists and again.intent == first.intent
    other = Transfer("r1", TransferKind.credit, "acme", 501, "USD")
    assert ledger.record_credit_intent(other).conflict is Result.exists_with_different_amount
    assert (
        ledger.record_credit_intent(credit, SystemAccount.adjustments).conflict
        is Result.exists_with_different_account
    )
    with pytest.raises(Exception, match="credit transfer"):
        ledger.record_credit_intent(Transfer("r2", TransferKind.debit, "acme", 5, "USD"))
    assert [i.id for i in ledger.unsettled_credit_intents(limit=10)] == ["r1"]
    assert ledger.unsettled_credit_intents(older_than_ms=3_600_000, limit=10) == []


def test_a_drained_credit_settles_its_intent_and_comes_from_its_source(ledger: SqlLedger) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.record_credit_intent(
        Transfer("r1", TransferKind.credit, "acme", 500, "USD"), SystemAccount.adjustments
    )
    report = ledger.apply_journal([at(epoch.epoch_id, 1, line("r1", "c", "acme", 500))])
    assert report.intents_settled == 1
    intent = ledger.get_credit_intent("r1")
    assert intent is not None and intent.state is IntentState.settled
    assert intent.result is Result.ok
    assert ledger.balance_of("@adjustments:USD") == -500
    assert ledger.unsettled_credit_intents(limit=10) == []
    debit_id = Transfer("d9", TransferKind.credit, "acme", 5, "USD")
    ledger.apply_journal([at(epoch.epoch_id, 2, line("d9", "d", "acme", 5))])
    assert ledger.record_credit_intent(debit_id).conflict is Result.exists_with_different_kind


def test_an_intent_whose_id_drains_as_another_transfer_settles_with_the_conflict(
    ledger: SqlLedger,
) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.record_credit_intent(Transfer("x", TransferKind.credit, "acme", 500, "USD"))
    ledger.apply_journal([at(epoch.epoch_id, 1, line("x", "d", "acme", 500))])
    intent = ledger.get_credit_intent("x")
    assert intent is not None and intent.result is Result.exists_with_different_kind
    assert ledger.settle_credit_intent("x", Result.ok) is False  # already settled


_lines = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from("dc"),
        st.integers(1, 10_000),
        st.sampled_from([Result.ok, Result.insufficient_funds]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=_lines, seed=st.integers(0, 2**32))
def test_random_batches_with_duplicates_give_the_same_ledger(
    specs: list[tuple[str, str, int, Result]], seed: int
) -> None:
    rng = random.Random(seed)
    with SqlLedger.open("sqlite://") as once, SqlLedger.open("sqlite://") as messy:
        epoch = once.init_epoch(EPOCH_NS, 1)
        messy.init_epoch(EPOCH_NS, 1)
        lines = [
            at(epoch.epoch_id, i, line(f"t{i}", k, acct, amt, res))
            for i, (acct, k, amt, res) in enumerate(specs)
        ]
        once.apply_journal([_in(d, epoch.epoch_id) for d in lines])
        messy_epoch = messy.current_epoch()
        assert messy_epoch is not None
        stream = [_in(d, messy_epoch.epoch_id) for d in lines]
        deliveries = stream + rng.sample(stream, k=rng.randint(0, len(stream)))
        for _ in range(len(deliveries)):  # random batches, possibly re-delivered out of order
            if not deliveries:
                break
            cut = rng.randint(1, len(deliveries))
            messy.apply_journal(deliveries[:cut])
            deliveries = deliveries[cut:]
        ids = ["a", "b", "c", "@usage_revenue:USD", "@card_clearing:USD"]
        assert messy.balances(ids) == once.balances(ids)
        assert messy.count_transfers() == once.count_transfers() == len(specs)
        assert messy.conservation() == {"USD": 0} and messy.journal_conflicts_count() == 0


def _in(d: DrainedLine, epoch_id: str) -> DrainedLine:
    return DrainedLine(d.line, Position(epoch_id, 0, d.position.stream_id, 0))


def test_transfers_pages_follow_the_cursor_for_customers_and_system_accounts(
    ledger: SqlLedger,
) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.apply_journal(
        [at(epoch.epoch_id, i, line(f"t{i:02d}", "dc"[i % 2], "acme", 10 + i)) for i in range(25)]
    )
    for account_id, expected in (("acme", 25), ("@usage_revenue:USD", 13)):
        seen: list[str] = []
        after = None
        for _ in range(10):
            page = ledger.transfers_page(account_id, after=after, limit=10)
            seen += [t.id for t in page.items]
            after = page.next_cursor
            if after is None:
                break
        assert len(seen) == len(set(seen)) == expected
    with pytest.raises(UsageError):
        ledger.transfers_page("acme", after="garbage", limit=10)


_texts = st.one_of(
    st.builds(
        lambda tid, k, acct, amt, cur, code, bal, ts, rc: "|".join(
            [tid, k, acct, amt, cur, code, bal, ts, *([rc] if rc else [])]
        ),
        st.sampled_from(["t1", "a.b:c-d_e", "x" * 64, "x" * 65, "t 1", "@sys", ""]),
        st.sampled_from(["d", "c", "x", "D"]),
        st.sampled_from(["acme", "a" * 64, "a|b", "é"]),
        st.sampled_from(["1", "250", "0", "007", "-5", str(10**13), str(10**13 + 1), "1e3"]),
        st.sampled_from(["USD", "JPY", "XXX", "usd"]),
        st.sampled_from(["0", "7", "14", "15", "99", "07", "-0"]),
        st.sampled_from(["", "0", "-5", "12", "-0", "007", str(10**15), str(-(10**15) - 1)]),
        st.sampled_from(["1700000000000", "0", "-1", "01", ""]),
        st.sampled_from([None, "", "rc-0123456789abcdef0123456789abc", "rc|x"]),
    ),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(_texts, min_size=1, max_size=6))
def test_the_fast_entry_parser_accepts_and_refuses_exactly_what_parse_entry_does(
    texts: list[str],
) -> None:
    """The drainer's columnar parser takes a regex fast path; any line it does not recognise
    goes through ``parse_line``, so it must end with the very lines and values parse_entry has."""
    fields = {"e": "ep-1", "d": "\n".join(texts)}
    lines, rejected = parse_entry(3, StreamId(5, 1), fields)
    batch = LineBatch()
    parse_entry_into(batch, 3, StreamId(5, 1), fields)
    expected = LineBatch()
    for d in lines:
        expected.add_line(d.line, d.position, format_line(d.line))
    assert batch.rows == expected.rows
    assert batch.rejected == rejected


def test_a_line_repeated_in_one_batch_with_other_parameters_is_a_recorded_conflict(
    ledger: SqlLedger,
) -> None:
    epoch = ledger.init_epoch(EPOCH_NS, 1)
    ledger.create_account(Account("acme", "USD"))
    first = at(epoch.epoch_id, 1, line("t", "c", "acme", 100))
    again = at(epoch.epoch_id, 2, line("t", "c", "acme", 100))
    other = at(epoch.epoch_id, 3, line("t", "c", "acme", 999))
    report = ledger.apply_journal([first, again, other])
    assert (report.inserted, report.duplicates, report.conflicts) == (1, 1, 1)
    assert ledger.balance_of("acme") == 100
    with ledger.transaction() as conn:
        rows = conn.execute(sa.select(journal_conflicts.c.reason, journal_conflicts.c.line)).all()
    assert [tuple(r) for r in rows] == [("different_amount", format_line(other.line))]


def test_balances_of_customers_and_system_accounts_match_their_postings(ledger: SqlLedger) -> None:
    """Since migration 0007 a customer's balance is a signed sum over ``account_id`` and a system
    account's a sum over its side: both must equal the posting-wise definition (credit side
    minus debit side, ok results only) for customers, system accounts and unknown ids asked in
    one call. Fails if the customer path gets the sign, the result filter or the side wrong."""
    epoch = ledger.init_epoch(EPOCH_NS, 4)
    ledger.record_credit_intent(
        Transfer("r1", TransferKind.credit, "b", 700, "USD"), SystemAccount.adjustments
    )
    specs = [
        ("c1", "c", "a", 1000, Result.ok),
        ("d1", "d", "a", 300, Result.ok),
        ("d2", "d", "a", 5000, Result.insufficient_funds),
        ("r1", "c", "b", 700, Result.ok),
        ("d3", "d", "b", 50, Result.ok),
        ("c2", "c", "b", 9, Result.account_not_found),
    ]
    lines = [at(epoch.epoch_id, i, line(*spec)) for i, spec in enumerate(specs)]
    ledger.apply_journal(lines)
    expected: dict[str, int] = {}
    for t in ledger.transfers_after(None, 100):
        if t.result is Result.ok:
            expected[t.credit_account_id] = expected.get(t.credit_account_id, 0) + t.amount_minor
            expected[t.debit_account_id] = expected.get(t.debit_account_id, 0) - t.amount_minor
    ids = ["a", "b", "nobody", "@usage_revenue:USD", "@card_clearing:USD", "@adjustments:USD"]
    assert ledger.balances(ids) == {i: expected.get(i, 0) for i in ids}
    assert ledger.balances(ids) == {
        "a": 700,
        "b": 650,
        "nobody": 0,
        "@usage_revenue:USD": 350,
        "@card_clearing:USD": -1000,
        "@adjustments:USD": -700,
    }
