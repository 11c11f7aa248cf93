"""Fault knobs of the gateway simulator and the fake, and the rules that turn them into outcomes.

Every random decision is a pure function of (seed, purpose, idempotency key): the same seed gives
the same declines whatever the request order or concurrency, in the fake and in the simulator.

Knobs (all bounded; JSON names as below; ``POST /v1/admin/faults`` takes any subset):

- ``seed``: int for the decision hash.
- ``latency_ms``: added before each charge/refund is processed.
- ``decline_rate``: share of charges declined ``card_declined``; ``card_decline_rates`` overrides it
  per card (``{"card_1": 1.0}`` declines every charge on card_1).
- ``velocity_max_charges`` / ``velocity_window_s``: the issuer's velocity rule: a charge on a card
  that already has that many succeeded charges within the window is declined ``velocity_limit``
  (0 = off). This is how repeated recharges in 2013 turned into declines and suspensions.
- ``timeout_after_commit``: share of first-time charges/refunds whose outcome is committed but
  whose response is lost: ``timeout_mode`` ``drop`` closes the connection, ``delay`` answers after
  ``timeout_delay_ms`` (past the client's read timeout).
- ``outage``: every charge/refund/lookup is answered 503 and nothing is processed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.domain.ids import is_valid_id
from tally.errors import UsageError
from tally.gateway.port import DeclineReason

LATENCY_MS_MAX = 60_000
TIMEOUT_DELAY_MS_MAX = 120_000
VELOCITY_WINDOW_S_MAX = 30 * 24 * 3600
VELOCITY_CHARGES_MAX = 1_000_000
CARD_RATES_MAX = 10_000
SEED_ABS_MAX = 2**63
TIMEOUT_MODES = ("drop", "delay")


class InvalidFaults(UsageError):
    hint = "see tally.gateway.faults for the fault knobs and their bounds"


@dataclass(frozen=True, slots=True)
class Faults:
    seed: int = 0
    latency_ms: int = 0
    decline_rate: float = 0.0
    card_decline_rates: Mapping[str, float] = field(default_factory=dict)
    velocity_max_charges: int = 0
    velocity_window_s: int = 3600
    timeout_after_commit: float = 0.0
    timeout_mode: str = "drop"
    timeout_delay_ms: int = 10_000
    outage: bool = False

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, -SEED_ABS_MAX, SEED_ABS_MAX)
        _check_int("latency_ms", self.latency_ms, 0, LATENCY_MS_MAX)
        _check_rate("decline_rate", self.decline_rate)
        _check_card_rates(self.card_decline_rates)
        _check_int("velocity_max_charges", self.velocity_max_charges, 0, VELOCITY_CHARGES_MAX)
        _check_int("velocity_window_s", self.velocity_window_s, 1, VELOCITY_WINDOW_S_MAX)
        _check_rate("timeout_after_commit", self.timeout_after_commit)
        if self.timeout_mode not in TIMEOUT_MODES:
            raise InvalidFaults(f"timeout_mode must be one of {TIMEOUT_MODES}")
        _check_int("timeout_delay_ms", self.timeout_delay_ms, 0, TIMEOUT_DELAY_MS_MAX)
        if type(self.outage) is not bool:
            raise InvalidFaults("outage must be true or false")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        return cls().merged(data)

    def merged(self, patch: Mapping[str, Any]) -> Faults:
        """A copy with the knobs in ``patch`` changed; unknown names are refused."""
        if not isinstance(patch, Mapping):
            raise InvalidFaults("faults must be a JSON object")
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(str(k) for k in patch if k not in names)
        if unknown:
            raise InvalidFaults(f"unknown fault knobs {unknown}; known: {sorted(names)}")
        changes = dict(patch)
        if "card_decline_rates" in changes and isinstance(changes["card_decline_rates"], Mapping):
            changes["card_decline_rates"] = dict(changes["card_decline_rates"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["card_decline_rates"] = dict(self.card_decline_rates)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def decline_rate_for(self, card_id: str) -> float:
        return self.card_decline_rates.get(card_id, self.decline_rate)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidFaults(f"{name} must be an integer in {low}..{high}, got {value!r:.40}")


def _check_rate(name: str, value: object) -> None:
    if type(value) not in (int, float) or not 0.0 <= value <= 1.0:  # type: ignore[operator]
        raise InvalidFaults(f"{name} must be a number in 0..1, got {value!r:.40}")


def _check_card_rates(rates: object) -> None:
    if not isinstance(rates, Mapping) or len(rates) > CARD_RATES_MAX:
        raise InvalidFaults(f"card_decline_rates must map at most {CARD_RATES_MAX} cards to rates")
    for card, rate in rates.items():
        if not is_valid_id(card):
            raise InvalidFaults(f"card_decline_rates has an invalid card id {card!r:.70}")
        _check_rate(f"card_decline_rates[{card}]", rate)


def draw(seed: int, purpose: str, key: str) -> float:
    """A number in [0, 1) fixed by its inputs (not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}|{purpose}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def charge_decline(
    faults: Faults, card_id: str, idempotency_key: str, recent_succeeded: int
) -> DeclineReason | None:
    """The issuer's answer to a first-time charge; ``recent_succeeded`` counts the card's
    succeeded charges within the velocity window."""
    if 0 < faults.velocity_max_charges <= recent_succeeded:
        return DeclineReason.velocity_limit
    rate = faults.decline_rate_for(card_id)
    if rate > 0.0 and draw(faults.seed, "decline", idempotency_key) < rate:
        return DeclineReason.card_declined
    return None


def response_fault(faults: Faults, idempotency_key: str) -> str | None:
    """``drop`` / ``delay`` when this first-time response is to be lost after the commit."""
    rate = faults.timeout_after_commit
    if rate > 0.0 and draw(faults.seed, "timeout", idempotency_key) < rate:
        return faults.timeout_mode
    return None
