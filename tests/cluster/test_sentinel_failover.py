from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tally.config import child_env
from tally.ops.cluster import Cluster
from tally.ops.topology import Topology
from tally.store.discovery import (
    PrimaryLocator,
    SwitchMaster,
    SwitchMasterListener,
    wait_for_primary,
)
from tally.store.epoch import read_epochs
from tally.store.keys import KeyLayout
from tests.cluster.conftest import sentinel_url
from tests.waiting import wait_for

FAILOVER_TIMEOUT_S = 30.0
TALLY = [sys.executable, "-m", "tally.cli"]


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_sentinel_replaces_a_failed_primary_and_discovery_finds_the_new_one(
    topology_factory: Callable[..., Topology], fault: str, request: pytest.FixtureRequest
) -> None:
    with Cluster(topology_factory()) as cluster:
        target = cluster.sentinel_target()
        locator = PrimaryLocator(target)
        request.addfinalizer(locator.close)
        old_address = locator.client() and locator.address
        locator.client().set("before", "1")
        locator.client().execute_command("WAIT", 2, 5000)
        seen: list[SwitchMaster] = []
        with SwitchMasterListener(target, on_event=seen.append) as listener:
            if fault == "kill":
                cluster.nodes["r1"].kill()
            else:
                cluster.nodes["r1"].pause()
            client = wait_for_primary(locator, timeout_s=FAILOVER_TIMEOUT_S, not_at=old_address)
            assert client.get("before") == b"1"
            # Writable once a replica has resynced to it (min-replicas-to-write: NOREPLICAS
            # until then, by design); bounded.
            deadline = time.monotonic() + FAILOVER_TIMEOUT_S
            while True:
                try:
                    client.set("after", "1")
                    break
                except redis.ResponseError as exc:
                    assert "NOREPLICAS" in str(exc) and time.monotonic() < deadline, exc
                    time.sleep(0.2)
            assert listener.snapshot(), "no +switch-master event recorded"
            wait_for(lambda: len(listener.snapshot()) == 3, "every Sentinel's announcement")
            # three Sentinels announce one failover: one callback, one failover counted
            assert len(seen) == listener.failovers == 1
            assert seen[0].old == old_address and seen[0].new == locator.address
        new_primary = cluster.primary()
        assert new_primary is not None and new_primary.name in ("r2", "r3")
        if fault == "pause":
            cluster.nodes["r1"].resume()


def test_tally_init_through_sentinel_initialises_the_primary_it_names(
    topology_factory: Callable[..., Topology], tmp_path: Path
) -> None:
    with Cluster(topology_factory()) as cluster:
        env = child_env()
        env["TALLY_LEDGER_URL"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        home = tmp_path / "home"
        out = subprocess.run(
            [*TALLY, "init", "--redis-url", sentinel_url(cluster), "--home", str(home), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        made = json.loads(out.stdout)
        layout = KeyLayout(made["namespace"], made["shards"])
        with contextlib.closing(cluster.nodes["r1"].client()) as primary:
            assert set(read_epochs(primary, layout)) == {layout.epoch_value(made["epoch"])}
