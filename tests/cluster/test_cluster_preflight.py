"""``check_cluster_live`` (serve's preflight on a redis+cluster:// URL): every node judged with
its role and named in the finding, a node that does not answer is a warning (TP015) rather than
a refusal, and the sizing rules (TP004/TP005) are errors only when the deployment's figures are
given. The real-cluster path is in test_cluster_serve.py (serve starts after preflight)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import redis

from tally.ops import preflight
from tally.ops.preflight import Finding, PreflightParams, Severity, check_cluster_live


@dataclass
class _Node:
    name: str
    server_type: str


class _Cluster:
    def __init__(self, down: set[str]) -> None:
        self.nodes = [_Node("n1:1", "primary"), _Node("n2:2", "replica")]
        self.down = down

    def get_nodes(self) -> list[_Node]:
        return self.nodes

    def get_redis_connection(self, node: _Node) -> Any:
        if node.name in self.down:
            raise redis.ConnectionError("refused")
        return node.name


def _finding(rule_id: str, severity: Severity) -> Finding:
    return Finding(rule_id, severity, f"title {rule_id}", "detail", "fix")


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """check_live replaced: every node gets a TP004 error and a TP014 error."""
    calls: list[tuple[str, str]] = []

    def fake(conn: Any, *, role: str, params: PreflightParams | None = None) -> list[Finding]:
        calls.append((conn, role))
        return [_finding("TP004", Severity.ERROR), _finding("TP014", Severity.ERROR)]

    monkeypatch.setattr(preflight, "check_live", fake)
    return calls


def test_every_node_is_judged_with_its_role_and_named(judged: list[tuple[str, str]]) -> None:
    """Shows the replicas are judged too (the 2013 defects on any node) with role replica, and
    that the cluster rule stays an error while the unsized TP004 is demoted to a warning."""
    found = check_cluster_live(_Cluster(down=set()))
    assert judged == [("n1:1", "primary"), ("n2:2", "replica")]
    assert [(f.rule_id, f.severity, f.title) for f in found] == [
        ("TP004", Severity.WARNING, "n1:1 (primary): title TP004 (default sizing)"),
        ("TP014", Severity.ERROR, "n1:1 (primary): title TP014"),
        ("TP004", Severity.WARNING, "n2:2 (replica): title TP004 (default sizing)"),
        ("TP014", Severity.ERROR, "n2:2 (replica): title TP014"),
    ]


def test_with_the_deployments_figures_the_sizing_rules_stay_errors(
    judged: list[tuple[str, str]],
) -> None:
    found = check_cluster_live(_Cluster(down=set()), params=PreflightParams())
    assert {(f.rule_id, f.severity) for f in found} == {
        ("TP004", Severity.ERROR),
        ("TP014", Severity.ERROR),
    }


def test_a_node_that_does_not_answer_is_a_warning_not_a_refusal(
    judged: list[tuple[str, str]],
) -> None:
    """One shard's node down must not stop serve from starting for the others (TP015)."""
    found = check_cluster_live(_Cluster(down={"n2:2"}))
    assert judged == [("n1:1", "primary")]
    down = [f for f in found if f.title.startswith("n2:2")]
    assert [(f.rule_id, f.severity) for f in down] == [("TP015", Severity.WARNING)]
    assert "refused" in down[0].detail
