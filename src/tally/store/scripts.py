"""The Lua scripts, with the bounds from ``domain.limits`` filled in at load time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from hashlib import sha1
from importlib import resources

from tally.domain import holds, limits

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_CONSTANTS = {
    "@JOURNAL_MAX@": str(limits.JOURNAL_ENTRIES_MAX),
    "@AMOUNT_MAX@": str(limits.AMOUNT_MINOR_MAX),
    "@BALANCE_MAX@": str(limits.BALANCE_MINOR_MAX),
    "@HOLD_EXPIRES_MS_MAX@": str(holds.HOLD_EXPIRES_MS_MAX),
}


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return sha1(self.source.encode()).hexdigest()


@cache
def script(name: str) -> Script:
    text = resources.files("tally.store.lua").joinpath(f"{name}.lua").read_text()
    for placeholder, value in _CONSTANTS.items():
        text = text.replace(placeholder, value)
    if _PLACEHOLDER.search(text):
        raise ImportError(f"unfilled placeholder in {name}.lua")
    return Script(name, text)


ALL = ("transfer", "account", "read", "recharge", "hold", "hold_sweep", "hold_route")
