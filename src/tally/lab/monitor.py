"""The sampler: what every node looked like over the run, written to ``monitor.jsonl``.

Two threads, each on its own connections with short timeouts (a paused or partitioned node must
not stall the others):

* ``nodes`` samples every ``NODE_PERIOD_S``: per node its role, replication link, run id, the
  ``sync_full`` / ``sync_partial_ok`` / ``sync_partial_err`` counters, connected replicas, DBSIZE
  and how many of tally's epoch keys it holds;
* ``ping`` samples every ``PING_PERIOD_S``: the PING round trip to the current primary (the node
  the last node sample saw as master with the most epoch keys; r1 when there is none). A PING
  that times out is recorded with its elapsed time (``timeout: true``), so an unresponsive
  primary shows as slow, not as missing.

  Given a ``pinger`` (:class:`tally.lab.pinger.PingerProcess`, what the runner uses), the PINGs
  run in that separate process instead of a thread here, writing ``ping.jsonl``: a PING timed
  inside the busy lab process measures the GIL (2-6 ms of noise), not the primary. The monitor
  then only tells the process which node is the primary, and always stops it.

The sampler reads Redis as an observer; it never writes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import redis

from tally.lab.history import now_ms
from tally.lab.pinger import PingerProcess

NODE_PERIOD_S = 0.25
PING_PERIOD_S = 0.02
SOCKET_TIMEOUT_S = 0.5
PING_TIMEOUT_S = 1.0
SAMPLES_MAX = 2_000_000

ClientFactory = Callable[[str, float], redis.Redis]


class Monitor:
    def __init__(
        self,
        path: Path,
        node_names: list[str],
        client_for: ClientFactory,
        epoch_keys: list[str],
        *,
        primary_hint: str = "r1",
        pinger: PingerProcess | None = None,
    ) -> None:
        self.path = Path(path)
        self.node_names = list(node_names)
        self.client_for = client_for
        self.epoch_keys = list(epoch_keys)
        self.primary = primary_hint
        self.last: dict[str, dict[str, Any]] = {}
        self._out: TextIO = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.pinger = pinger
        self._threads = [
            threading.Thread(target=self._nodes_loop, name="lab-monitor-nodes", daemon=True)
        ]
        if pinger is None:
            self._threads.append(
                threading.Thread(target=self._ping_loop, name="lab-monitor-ping", daemon=True)
            )
        self._clients: dict[tuple[str, str], redis.Redis] = {}
        self.samples = 0

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self.samples >= SAMPLES_MAX or self._out.closed:
                return
            self._out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self.samples += 1

    def _client(self, purpose: str, node: str, timeout_s: float) -> redis.Redis:
        key = (purpose, node)
        if key not in self._clients:
            self._clients[key] = self.client_for(node, timeout_s)
        return self._clients[key]

    def _drop(self, purpose: str, node: str) -> None:
        client = self._clients.pop((purpose, node), None)
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()

    def start(self) -> Monitor:
        self.sample_nodes()
        try:
            if self.pinger is not None:
                self.pinger.current = self.primary
                self.pinger.start()
            for thread in self._threads:
                thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            for thread in self._threads:
                if thread.is_alive():
                    thread.join(10)
        finally:
            if self.pinger is not None:
                self.pinger.stop()
        self.sample_nodes()
        with self._lock:
            self._out.close()
        for purpose, node in list(self._clients):
            self._drop(purpose, node)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- node samples ---------------------------------------------------------------------------
    def _nodes_loop(self) -> None:
        while not self._stop.wait(NODE_PERIOD_S):
            self.sample_nodes()

    def sample_nodes(self) -> dict[str, dict[str, Any]]:
        nodes = {name: self._sample(name) for name in self.node_names}
        self.last = nodes
        masters = [(n.get("epoch", 0), name) for name, n in nodes.items() if n["role"] == "master"]
        if masters:
            self.primary = max(masters)[1]
            if self.pinger is not None:
                self.pinger.target(self.primary)
        self._write({"t_ms": now_ms(), "kind": "nodes", "nodes": nodes})
        return nodes

    def _sample(self, name: str) -> dict[str, Any]:
        try:
            client = self._client("info", name, SOCKET_TIMEOUT_S)
            with client.pipeline(transaction=False) as pipe:
                pipe.info("all")
                pipe.exists(*self.epoch_keys)
                pipe.dbsize()
                info, epoch, dbsize = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._drop("info", name)
            return {"role": "down", "error": type(exc).__name__}
        return node_figures(info, int(epoch), dbsize)

    # -- ping samples ------------------------------------------------------------------------------
    def _ping_loop(self) -> None:
        while not self._stop.wait(PING_PERIOD_S):
            node = self.primary
            start = time.monotonic()
            entry: dict[str, Any] = {"t_ms": now_ms(), "kind": "ping", "node": node}
            try:
                self._client("ping", node, PING_TIMEOUT_S).ping()
            except (redis.RedisError, OSError) as exc:
                self._drop("ping", node)
                entry["error"] = type(exc).__name__
                entry["timeout"] = isinstance(exc, redis.TimeoutError)
                if not entry["timeout"]:
                    self._write(entry | {"ms": None})
                    self._stop.wait(0.2)  # refused or down: do not spin on reconnects
                    continue
            entry["ms"] = round((time.monotonic() - start) * 1000, 3)
            self._write(entry)


def node_figures(info: dict[str, Any], epoch: int, dbsize: Any) -> dict[str, Any]:
    """One node's sample from its ``INFO all``, the epoch keys it holds and its key count."""
    return {
        "role": info.get("role"),
        "link": info.get("master_link_status"),
        "run_id": info.get("run_id"),
        "sync_full": int(info.get("sync_full", 0)),
        "sync_partial_ok": int(info.get("sync_partial_ok", 0)),
        "sync_partial_err": int(info.get("sync_partial_err", 0)),
        "replicas": int(info.get("connected_slaves", 0)),
        "offset": int(info.get("master_repl_offset", 0)),
        "loading": int(info.get("loading", 0)),
        "sync_in_progress": int(info.get("master_sync_in_progress", 0)),
        "epoch": epoch,
        "dbsize": int(dbsize),
    }
