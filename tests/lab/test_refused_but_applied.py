"""``refused_but_applied`` (the cluster scenarios' figure, must be 0) counts requests told
"nothing was written" whose id moved money, not a refused retry of an attempt whose outcome
was unknown. CI, 2026-12-04 (shard-restarted-empty, 1): a debit unknown when s2's primary went
down was retried into the empty window (503 store_lost: that attempt wrote nothing), and the
first attempt came back with the restored AOF. Without the rule the first case below is 1."""

from __future__ import annotations

from tally.lab.cluster_scenarios import refused_but_applied
from tally.lab.history import Operation


def _op(n: int, tid: str, type_: str, at_ms: int) -> Operation:
    code = {"fail": {"code": "store_lost"}, "info": {}, "ok": {"result": "ok"}}[type_]
    return Operation(n, "debit", 0, at_ms, {"id": tid, "account": "a1"}, type_, at_ms + 5, code)


def test_a_refused_retry_of_an_unknown_attempt_is_not_a_refusal_of_the_request() -> None:
    writes = [_op(1, "u1", "info", 1_000), _op(2, "u1", "fail", 1_200)]
    assert refused_but_applied(writes, moved={"u1"}) == 0


def test_a_request_refused_outright_whose_id_moved_money_is_counted() -> None:
    writes = [_op(1, "u1", "fail", 1_000), _op(2, "u2", "fail", 1_100)]
    assert refused_but_applied(writes, moved={"u1"}) == 1


def test_an_unknown_attempt_after_the_refusal_does_not_excuse_it() -> None:
    writes = [_op(1, "u1", "fail", 1_000), _op(2, "u1", "info", 1_200)]
    assert refused_but_applied(writes, moved={"u1"}) == 1
