from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tally.ops.cluster import Cluster
from tally.ops.topology import Topology
from tally.store.discovery import PrimaryLocator, SwitchMasterListener, wait_for_primary

FAILOVER_TIMEOUT_S = 30.0


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
        with SwitchMasterListener(target) as listener:
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
        new_primary = cluster.primary()
        assert new_primary is not None and new_primary.name in ("r2", "r3")
        if fault == "pause":
            cluster.nodes["r1"].resume()
