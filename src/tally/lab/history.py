"""The client-side history of a lab run: every operation the workload issued and how it ended.

One JSON object a line (``history.jsonl``), Jepsen style: an ``invoke`` line when the client sends
the operation, then exactly one completion with the same ``op`` number:

    {"op": 17, "type": "invoke", "f": "debit", "process": 3, "t_ms": 1732473000123,
     "value": {"id": "d-...", "account": "a00042", "amount_minor": 30}}
    {"op": 17, "type": "ok", "f": "debit", "process": 3, "t_ms": 1732473000125,
     "value": {"result": "ok", "balance_minor": 970}}

``ok``: the service answered (the ``result`` code says what it decided: ``ok`` moved money,
``insufficient_funds`` did not); ``fail``: the service said it did NOT do it (a definite error, e.g.
READONLY or store_lost before anything was sent); ``info``: the outcome is unknown (timeout, broken
connection, pending credit) and the checker must allow both. ``t_ms`` is wall-clock epoch ms so it
lines up with the gateway's and the ledger's own timestamps.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

TYPES = ("invoke", "ok", "fail", "info")
HISTORY_LINES_MAX = 5_000_000  # a run that produced more is misconfigured: stop recording


def now_ms() -> int:
    return int(time.time() * 1000)


class HistoryWriter:
    """Thread-safe appender; every line is flushed so a crashed run still leaves its history."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._out: TextIO = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self._ops = itertools.count(1)
        self.lines = 0
        self.dropped = 0

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self.lines >= HISTORY_LINES_MAX:
                self.dropped += 1
                return
            self._out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self.lines += 1

    def invoke(self, f: str, process: int | str, value: dict[str, Any]) -> int:
        op = next(self._ops)
        self._write({"op": op, "type": "invoke", "f": f, "process": process, "t_ms": now_ms(),
                     "value": value})  # fmt: skip
        return op

    def complete(
        self, op: int, type_: str, f: str, process: int | str, value: dict[str, Any]
    ) -> None:
        if type_ not in TYPES[1:]:
            raise ValueError(f"completion type must be ok, fail or info, got {type_!r}")
        self._write({"op": op, "type": type_, "f": f, "process": process, "t_ms": now_ms(),
                     "value": value})  # fmt: skip

    def flush(self) -> None:
        with self._lock:
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            if not self._out.closed:
                self._out.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Operation:
    """One invoke with its completion (``type`` is ``info`` when none was recorded)."""

    op: int
    f: str
    process: int | str
    invoked_ms: int
    value: dict[str, Any]
    type: str = "info"
    completed_ms: int | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> str | None:
        return self.outcome.get("result")

    @property
    def moved_money(self) -> bool:
        """The service acknowledged that this operation moved money."""
        return self.type == "ok" and self.result == "ok"


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as src:
        for n, line in enumerate(src, 1):
            if n > HISTORY_LINES_MAX:
                raise ValueError(f"{path}: more than {HISTORY_LINES_MAX} lines")
            line = line.strip()
            if line:
                yield json.loads(line)


def pair(lines: Iterator[dict[str, Any]]) -> list[Operation]:
    """Invokes matched with completions by ``op``; an invoke never completed stays ``info``.
    A completion without an invoke, or a second completion, is a malformed history."""
    ops: dict[int, Operation] = {}
    for entry in lines:
        op, type_ = int(entry["op"]), entry["type"]
        if type_ == "invoke":
            if op in ops:
                raise ValueError(f"op {op} invoked twice")
            ops[op] = Operation(op, entry["f"], entry["process"], int(entry["t_ms"]),
                                dict(entry.get("value") or {}))  # fmt: skip
            continue
        if type_ not in TYPES:
            raise ValueError(f"op {op}: unknown type {type_!r}")
        found = ops.get(op)
        if found is None or found.completed_ms is not None:
            raise ValueError(f"op {op}: completion without a pending invoke")
        found.type, found.completed_ms = type_, int(entry["t_ms"])
        found.outcome = dict(entry.get("value") or {})
    return sorted(ops.values(), key=lambda o: o.op)


def read_history(path: Path) -> list[Operation]:
    return pair(read_lines(path))
