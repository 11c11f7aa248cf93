"""Shared fixtures: real redis-server processes on free loopback ports, real SQL ledgers.

PostgreSQL tests run when TALLY_TEST_POSTGRES_URL is set; under CI (CI=true) a missing URL is an
error, not a skip, so the PostgreSQL path can never silently stop being tested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode, orphan_pids
from tally.store.keys import KeyLayout
from tally.sync.rebuild import init_store
from tests.serve.harness import Served, gateway_pids

POSTGRES_ENV = "TALLY_TEST_POSTGRES_URL"
#: The tests never send a webhook off this machine (schemathesis registers endpoints it makes
#: up): every process they start inherits this egress policy (``config.MACHINE_VARS``).
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"
os.environ["TALLY_WEBHOOK_HOSTS"] = LOOPBACK_HOSTS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long lab and benchmark tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("TALLY_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or TALLY_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[RedisNode]:
    """A fresh redis-server of its own, stopped (and checked gone) after the test."""
    node = RedisNode(name="primary", dir=tmp_path / "redis")
    node.start()
    try:
        yield node
    finally:
        node.stop()
        assert orphan_pids(str(tmp_path)) == [], "redis-server left running"


def postgres_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the PostgreSQL tests: set {POSTGRES_ENV}")
    return None


@pytest.fixture
def postgres_ledger_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    base = postgres_url()
    if base is None:
        pytest.skip(f"set {POSTGRES_ENV} to run PostgreSQL tests")
    import sqlalchemy as sa

    from tally.ledger.urls import normalise_url

    admin = sa.create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    name = f"tally_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(normalise_url(base)).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """Every ledger test runs on SQLite and on PostgreSQL."""
    name = "sqlite_ledger_url" if request.param == "sqlite" else "postgres_ledger_url"
    return str(request.getfixturevalue(name))


# -- a real `tally serve`, for tests/api and tests/serve ------------------------------------------
def _served(base: Path) -> Iterator[Served]:
    served = Served(home=base / "home")
    served.start()
    try:
        yield served
    finally:
        served.stop()
        assert orphan_pids(str(base)) == [], "redis-server left running"
        assert gateway_pids(str(base)) == [], "gateway simulator left running"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh ``tally serve`` of its own, for tests that break it."""
    yield from _served(tmp_path)


@pytest.fixture(scope="module")
def shared_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``tally serve`` for a module of tests that only use the API (unique ids per test)."""
    yield from _served(tmp_path_factory.mktemp("served"))


# -- an initialised deployment on a real node and ledger, for tests/billing and tests/recharge ---
@pytest.fixture
def settings(redis_node: RedisNode, ledger_url: str, tmp_path: Path) -> Settings:
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
