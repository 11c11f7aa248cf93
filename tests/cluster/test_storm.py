"""F1: all remote replicas lose the primary at once. 2013 full-syncs them all; hardened resyncs
partially. Counts only: no timed performance assertions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tally.ops.storm import run_storm
from tally.ops.topology import Topology


def test_with_the_2013_profile_every_replica_full_syncs_after_a_partition(
    topology_factory: Callable[..., Topology],
) -> None:
    result = run_storm(topology_factory(), profile="2013", partition_s=2.0)
    assert result.full_syncs == result.replicas_remote == 2
    assert result.partial_syncs == 0


def test_with_the_hardened_profile_every_replica_resyncs_partially(
    topology_factory: Callable[..., Topology],
) -> None:
    result = run_storm(topology_factory(), profile="hardened", partition_s=2.0)
    assert result.full_syncs == 0
    assert result.partial_syncs == result.replicas_remote == 2


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["2013", "hardened"])
def test_storm_with_a_larger_dataset_and_longer_partition_reports_its_figures(
    topology_factory: Callable[..., Topology], profile: str
) -> None:
    result = run_storm(
        topology_factory(),
        profile=profile,
        partition_s=8.0,
        dataset_bytes=100_000_000,
        write_rate_per_s=2000,
    )
    print(result.to_dict())
    if profile == "2013":
        assert result.full_syncs == 2
    else:
        assert (result.full_syncs, result.partial_syncs) == (0, 2)
