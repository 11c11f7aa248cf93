"""Real redis-server nodes for the preflight rules, all stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tally.ops.node import ConfigValue, RedisNode, orphan_pids
from tally.ops.preflight import Finding

NodeFactory = Callable[..., RedisNode]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """``make_node(name, start=True, **directives)``: underscores in directive names become
    dashes (``repl_backlog_size="16kb"``)."""
    made: list[RedisNode] = []

    def make(name: str, *, start: bool = True, **directives: ConfigValue) -> RedisNode:
        node = RedisNode(
            name=name,
            dir=tmp_path / name,
            directives={k.replace("_", "-"): v for k, v in directives.items()},
        )
        made.append(node)
        if start:
            node.start()
        else:
            node.write_config()
        return node

    yield make
    for node in made:
        node.stop()
    assert orphan_pids(str(tmp_path)) == [], "redis-server left running"


def ids(findings: list[Finding]) -> set[str]:
    return {f.rule_id for f in findings}


def severity_of(findings: list[Finding], rule_id: str) -> str:
    return next(f.severity.value for f in findings if f.rule_id == rule_id)


def link_status(node: RedisNode) -> str:
    return str(node.client().info("replication").get("master_link_status", "none"))
