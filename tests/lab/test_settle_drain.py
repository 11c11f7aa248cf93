"""The lab's final drain goes on until the journal is settled: through each serve, until a pass
where none settles anything and no fence held anything back (bounded). One admin drain stops at
its first round that settles nothing, and a fenced round settles nothing: with a replica still
catching up after the heal, the entries stayed in the journal and the checker read them as
Redis ahead of the ledger (invariant 3). With one call per serve, the case below settles 0."""

from __future__ import annotations

import time
from types import SimpleNamespace

from tally.lab.serve_billing import ServeBilling

#: (entries, fenced so far) each serve's drainer answers, call after call: dc1's first round is
#: fenced (a replica lagging), its next one settles the 7 entries it held back; dc2 has nothing
ANSWERS = {0: [(0, 1), (7, 1), (0, 1)], 1: [(0, 0), (0, 0), (0, 0)]}


def _subject(answers: dict[int, list[tuple[int, int]]]) -> SimpleNamespace:
    left = {via: list(seq) for via, seq in answers.items()}
    return SimpleNamespace(
        serves=[object(), object()],
        _drain_through=lambda via: left[via].pop(0),
    )


def _drain(subject: SimpleNamespace, within_s: float) -> dict[str, object]:
    return ServeBilling._drain_until_settled(subject, time.monotonic() + within_s)  # type: ignore[arg-type]


def test_a_fenced_round_is_drained_again_until_nothing_is_held_back() -> None:
    outcome = _drain(_subject(ANSWERS), within_s=10.0)
    assert outcome == {"calls": 6, "entries": 7, "settled": True}


def test_a_drain_that_never_settles_is_bounded_and_says_so() -> None:
    forever = {0: [(0, n) for n in range(1, 1000)], 1: [(0, 0)] * 1000}  # fenced every round
    t0 = time.monotonic()
    outcome = _drain(_subject(forever), within_s=1.0)
    assert outcome["settled"] is False and outcome["entries"] == 0
    assert time.monotonic() - t0 < 10.0
