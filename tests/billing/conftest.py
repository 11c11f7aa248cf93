from __future__ import annotations

from collections.abc import Iterator

import pytest

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.ledger.rebuild import init_store
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout


@pytest.fixture
def settings(redis_node: RedisNode, ledger_url: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings.resolve(
        redis_url=redis_node.url, ledger_url=ledger_url, home=str(tmp_path / "home")
    )


@pytest.fixture
def dep(settings: Settings, redis_node: RedisNode) -> Iterator[Deployment]:
    with SqlLedger.open(settings.ledger_url) as ledger:
        client = redis_node.client()
        init_store(client, KeyLayout(settings.namespace, 4), ledger)
        client.close()
    with open_deployment(settings) as deployment:
        yield deployment
