"""One set of sizing figures: the hardened profile sizes a config from ``ProfileParams`` and
preflight (TP004, TP005) checks it with the same figures and the same formulas."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.cli.preflight_cmd import preflight
from tally.ops.binary import find_redis_server
from tally.ops.node import ConfigValue, RedisNode
from tally.ops.preflight import Finding, PreflightParams, check_config_file
from tally.ops.profiles import (
    NodeRole,
    ProfileParams,
    backlog_need_bytes,
    full_sync_buffer_need_bytes,
    node_directives,
)
from tally.ops.topology import parse_topology

from .conftest import NodeFactory, ids, severity_of

SIZING_RULES = {"TP004", "TP005"}


def _hardened(params: ProfileParams, link: int) -> dict[str, ConfigValue]:
    role = NodeRole(None, replicas_expected=2)
    return dict(
        node_directives(
            "hardened",
            find_redis_server(),
            role,
            params=params,
            password="pw",
            slowest_link_bytes_per_s=link,
        )
    )


def _check(directives: dict[str, ConfigValue], params: PreflightParams) -> list[Finding]:
    with tempfile.TemporaryDirectory() as tmp:
        node = RedisNode(name="n", dir=Path(tmp) / "n", directives=directives)
        node.write_config()
        found: list[Finding] = check_config_file(node.config_path, params=params)
    return found


figures = st.builds(
    ProfileParams,
    write_rate_bytes_per_s=st.integers(1_000, 20_000_000),  # x 300 s x 4 < BACKLOG_MAX_BYTES
    partition_s_max=st.floats(1, 300),
    safety_factor=st.floats(1, 4),
    dataset_bytes_max=st.integers(1_000_000, 64 * 1024**3),
    slowest_link_bytes_per_s=st.sampled_from([0, 0, 1_000_000, 125_000_000]),
)
links = st.sampled_from([0, 1_000_000, 12_500_000])


@settings(max_examples=40, deadline=None)
@given(params=figures, link=links)
def test_a_config_the_hardened_profile_sized_passes_preflight_with_the_same_figures(
    params: ProfileParams, link: int
) -> None:
    found = _check(_hardened(params, link), PreflightParams(params, slowest_link_bytes_per_s=link))
    assert not SIZING_RULES & ids(found), [f.detail for f in found]


@settings(max_examples=40, deadline=None)
@given(params=figures, link=links)
def test_a_config_sized_below_the_need_at_the_stated_rate_is_an_error(
    params: ProfileParams, link: int
) -> None:
    checked = PreflightParams(params, slowest_link_bytes_per_s=link)
    directives = _hardened(params, link)
    short = backlog_need_bytes(params.write_rate_bytes_per_s, params.partition_s_max) - 1
    directives["repl-backlog-size"] = short
    assert severity_of(_check(directives, checked), "TP004") == "error"
    grown = full_sync_buffer_need_bytes(
        params.write_rate_bytes_per_s, params.dataset_bytes_max, checked.link_bytes_per_s
    )
    if grown > 1:
        directives["client-output-buffer-limit"] = f"replica {grown - 1} {grown - 1} 0"
        assert severity_of(_check(directives, checked), "TP005") == "error"


# -- a topology file's [params] reach `tally preflight` -----------------------------------------
TOPOLOGY = {
    "name": "t",
    "profile": "hardened",
    "base_dir": "run",
    "params": {"write_rate_bytes_per_s": 100_000, "partition_s_max": 30, "safety_factor": 2},
    "dc": [{"name": "dc1"}, {"name": "dc2"}],
    "node": [
        {"name": "r1", "dc": "dc1", "role": "primary"},
        {"name": "r2", "dc": "dc2", "role": "replica"},
    ],
    "link": [{"between": ["dc1", "dc2"], "bandwidth_bytes_per_s": 2_000_000}],
}
TOPOLOGY_TOML = """name = "t"
profile = "hardened"
base_dir = "run"

[params]
write_rate_bytes_per_s = 100_000
partition_s_max = 30
safety_factor = 2

[[dc]]
name = "dc1"
[[dc]]
name = "dc2"

[[node]]
name = "r1"
dc = "dc1"
role = "primary"
[[node]]
name = "r2"
dc = "dc2"
role = "replica"

[[link]]
between = ["dc1", "dc2"]
bandwidth_bytes_per_s = 2_000_000
"""


def test_preflight_for_a_topology_takes_its_params_links_and_replicas() -> None:
    params = PreflightParams.for_topology(parse_topology(TOPOLOGY, source="t"))
    assert params.sizing == ProfileParams(
        write_rate_bytes_per_s=100_000, partition_s_max=30, safety_factor=2
    )
    assert (params.link_bytes_per_s, params.replicas_expected) == (2_000_000, 1)


def _run(*args: str) -> tuple[int, list[dict[str, str]]]:
    result = CliRunner().invoke(preflight, [*args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def test_the_cli_checks_a_profile_config_with_the_figures_of_its_topology(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    topology = tmp_path / "t.toml"
    topology.write_text(TOPOLOGY_TOML)
    sized = PreflightParams.for_topology(parse_topology(TOPOLOGY, source="t"))
    directives = _hardened(sized.sizing, sized.slowest_link_bytes_per_s)
    node = make_node("r1", start=False, **directives)
    assert backlog_need_bytes(100_000, 30, 2) == node.directives["repl-backlog-size"] == 6_000_000
    config = str(node.config_path)

    # Without the topology, preflight judges by its own defaults (1 MiB/s for 60 s), not by the
    # figures this config was sized from: a false alarm.
    code, found = _run("--config", config)
    assert code == 1 and "TP004" in {f["rule_id"] for f in found}
    # With it: the same figures, nothing to say about sizing.
    code, found = _run("--config", config, "--topology", str(topology))
    assert code == 0 and not SIZING_RULES & {f["rule_id"] for f in found}
    # A flag states a figure on top of the topology's: 200 kB/s x 30 s = the whole backlog.
    code, found = _run("--config", config, "--topology", str(topology), "--write-rate", "200000")
    assert {f["rule_id"]: f["severity"] for f in found}.get("TP004") == "warning"
    code, found = _run("--config", config, "--topology", str(topology), "--write-rate", "300000")
    assert code == 1 and {f["rule_id"]: f["severity"] for f in found}["TP004"] == "error"


def test_a_figure_profile_params_refuses_exits_2(make_node: NodeFactory) -> None:
    node = make_node("r1", start=False)
    result = CliRunner().invoke(preflight, ["--config", str(node.config_path), "--write-rate", "0"])
    assert result.exit_code == 2 and "write_rate_bytes_per_s must be > 0" in result.output
