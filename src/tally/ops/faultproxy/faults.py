"""The fault vocabulary (toxiproxy's words) and its validation; no I/O here.

Each link carries one :class:`DirectionFaults` per direction. ``set_fault`` with
``direction="both"`` writes the same fault into both. ``reset`` is an action, not a state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tally.errors import UsageError

LATENCY_MS_MAX = 600_000
RATE_BYTES_S_MIN = 64
RATE_BYTES_S_MAX = 10**11
SLOW_CLOSE_MS_MAX = 600_000


class Direction(StrEnum):
    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client
    BOTH = "both"

    def expand(self) -> tuple[Direction, ...]:
        if self is Direction.BOTH:
            return (Direction.UPSTREAM, Direction.DOWNSTREAM)
        return (self,)


class FaultKind(StrEnum):
    PARTITION = "partition"  # params: mode = "drop" | "refuse"
    LATENCY = "latency"  # params: latency_ms, jitter_ms
    BANDWIDTH = "bandwidth"  # params: rate_bytes_s
    RESET = "reset"  # action: RST the current connections once
    SLOW_CLOSE = "slow_close"  # params: delay_ms before a close is passed on


PARTITION_MODES = ("drop", "refuse")


@dataclass
class DirectionFaults:
    """The faults active on one direction of one link."""

    held: bool = False  # partition mode "drop": bytes wait, nothing passes
    latency_ms: int = 0
    jitter_ms: int = 0
    rate_bytes_s: int | None = None
    slow_close_ms: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def delay_s(self) -> float:
        if self.latency_ms == 0:
            return 0.0
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000.0

    def describe(self) -> dict[str, Any]:
        active: dict[str, Any] = {}
        if self.held:
            active["partition"] = {"mode": "drop"}
        if self.latency_ms:
            active["latency"] = {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms}
        if self.rate_bytes_s is not None:
            active["bandwidth"] = {"rate_bytes_s": self.rate_bytes_s}
        if self.slow_close_ms:
            active["slow_close"] = {"delay_ms": self.slow_close_ms}
        return active

    def clear(self, kind: FaultKind | None = None) -> None:
        if kind in (None, FaultKind.PARTITION):
            self.held = False
        if kind in (None, FaultKind.LATENCY):
            self.latency_ms = self.jitter_ms = 0
        if kind in (None, FaultKind.BANDWIDTH):
            self.rate_bytes_s = None
        if kind in (None, FaultKind.SLOW_CLOSE):
            self.slow_close_ms = 0


def _int_param(params: dict[str, Any], name: str, low: int, high: int, default: int | None) -> int:
    value = params.pop(name, default)
    if value is None:
        raise UsageError(f"missing parameter {name}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} must be an integer, got {value!r}") from exc
    if not low <= number <= high:
        raise UsageError(f"{name} must be in [{low}, {high}], got {number}")
    return number


@dataclass(frozen=True)
class Fault:
    """A validated fault request: what ``set_fault`` applies."""

    kind: FaultKind
    direction: Direction
    params: dict[str, Any]

    def apply_to(self, faults: DirectionFaults) -> None:
        if self.kind is FaultKind.PARTITION:
            faults.held = True  # "refuse" is link-level and handled by the link itself
        elif self.kind is FaultKind.LATENCY:
            faults.latency_ms = self.params["latency_ms"]
            faults.jitter_ms = self.params["jitter_ms"]
        elif self.kind is FaultKind.BANDWIDTH:
            faults.rate_bytes_s = self.params["rate_bytes_s"]
        elif self.kind is FaultKind.SLOW_CLOSE:
            faults.slow_close_ms = self.params["delay_ms"]


def make_fault(kind: str, direction: str = "both", **params: Any) -> Fault:
    """Validate a fault request; raises :class:`UsageError` with the reason."""
    try:
        fkind, fdir = FaultKind(kind), Direction(direction)
    except ValueError as exc:
        raise UsageError(
            f"{exc}; kinds: {[k.value for k in FaultKind]}, directions: "
            f"{[d.value for d in Direction]}"
        ) from exc
    rest = dict(params)
    checked = _check_params(fkind, fdir, rest)
    if rest:
        raise UsageError(f"unknown parameters for {fkind.value}: {sorted(rest)}")
    return Fault(fkind, fdir, checked)


def _check_params(kind: FaultKind, direction: Direction, rest: dict[str, Any]) -> dict[str, Any]:
    if kind is FaultKind.PARTITION:
        mode = rest.pop("mode", "drop")
        if mode not in PARTITION_MODES:
            raise UsageError(f"partition mode must be one of {PARTITION_MODES}, got {mode!r}")
        if mode == "refuse" and direction is not Direction.BOTH:
            raise UsageError("partition mode refuse closes whole connections: use direction both")
        return {"mode": mode}
    if kind is FaultKind.LATENCY:
        latency = _int_param(rest, "latency_ms", 0, LATENCY_MS_MAX, None)
        jitter = _int_param(rest, "jitter_ms", 0, latency, 0)
        return {"latency_ms": latency, "jitter_ms": jitter}
    if kind is FaultKind.BANDWIDTH:
        rate = _int_param(rest, "rate_bytes_s", RATE_BYTES_S_MIN, RATE_BYTES_S_MAX, None)
        return {"rate_bytes_s": rate}
    if kind is FaultKind.SLOW_CLOSE:
        return {"delay_ms": _int_param(rest, "delay_ms", 0, SLOW_CLOSE_MS_MAX, None)}
    return {}  # reset takes no parameters
