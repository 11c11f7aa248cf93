"""The primary-latency sampler runs in its own process: it PINGs the node it is told to, records
every sample (a refused node too), follows a new target, and is gone once stopped."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from tally.lab.pinger import PingerProcess
from tally.ops.node import RedisNode

POLLS_MAX = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "ping"]


def _wait_for(path: Path, predicate: Any) -> list[dict[str, Any]]:
    for _ in range(POLLS_MAX):  # bounded: the process flushes at least twice a second
        samples = _samples(path)
        if predicate(samples):
            return samples
        time.sleep(0.05)
    return _samples(path)


def test_the_sampler_process_pings_its_target_follows_a_new_one_and_stops_when_told(
    redis_node: RedisNode, tmp_path: Path
) -> None:
    out = tmp_path / "ping.jsonl"
    nodes = {"r1": (redis_node.host, redis_node.port), "gone": ("127.0.0.1", _free_port())}
    pinger = PingerProcess(out, nodes, "r1", password=redis_node.password, period_s=0.01)
    try:
        pinger.start()
        assert pinger.running()
        samples = _wait_for(out, lambda s: sum(1 for x in s if x.get("ms") is not None) >= 5)
        ok = [s for s in samples if s["node"] == "r1" and s.get("ms") is not None]
        assert len(ok) >= 5
        assert all(s["ms"] >= 0 for s in ok)
        header = json.loads(out.read_text().splitlines()[0])
        assert header["kind"] == "pinger" and isinstance(header["nice"], int)

        pinger.target("gone")
        samples = _wait_for(out, lambda s: any(x["node"] == "gone" for x in s))
        refused = [s for s in samples if s["node"] == "gone"]
        assert refused and refused[-1]["ms"] is None and "error" in refused[-1]
    finally:
        proc = pinger.proc
        pinger.stop()
    assert proc is not None and proc.poll() is not None
    assert not pinger.running()
