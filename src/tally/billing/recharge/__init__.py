"""Auto-recharge that can never double charge: the saga (``saga``), its completer, the gate
(freeze switch, store health, gateway circuit), the service the API/CLI use, and remediation.

``build`` assembles them around a health probe; ``tally.bootstrap.recharging`` is the one place
that does so for a real deployment (``serve``, the CLI and the lab all call it)."""

from __future__ import annotations

from dataclasses import dataclass

from tally.billing.engine import Engine
from tally.billing.recharge.completer import Completer
from tally.billing.recharge.health import (
    Circuit,
    ClusterHealth,
    FollowingHealth,
    Gate,
    GateMetrics,
    HealthBounds,
    HealthProbe,
    RedisHealth,
    StaticHealth,
)
from tally.billing.recharge.saga import Fault, RechargeSaga
from tally.billing.recharge.service import RechargeService
from tally.gateway.port import Gateway

__all__ = [
    "Circuit",
    "ClusterHealth",
    "Completer",
    "FollowingHealth",
    "Gate",
    "GateMetrics",
    "HealthBounds",
    "HealthProbe",
    "RechargeSaga",
    "RechargeService",
    "Recharging",
    "RedisHealth",
    "StaticHealth",
    "build",
]


@dataclass
class Recharging:
    saga: RechargeSaga
    completer: Completer
    service: RechargeService
    gate: Gate


def build(
    engine: Engine,
    gateway: Gateway,
    health: HealthProbe,
    *,
    circuit: Circuit | None = None,
    fault: Fault | None = None,
    older_than_ms: int = 0,
) -> Recharging:
    gate = Gate(engine.ledger, health, circuit or Circuit())
    saga = RechargeSaga(engine, gateway, gate, fault=fault)
    return Recharging(
        saga, Completer(saga, older_than_ms=older_than_ms), RechargeService(engine, saga), gate
    )
