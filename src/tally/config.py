"""Settings: command-line options win over environment variables, which win over defaults.

TALLY_REDIS_URL     the Redis primary (default: the local deployment `tally local up` or
                    `tally serve` recorded in $TALLY_HOME/local.json)
TALLY_LEDGER_URL    sqlite:///... or postgresql://... (default: $TALLY_HOME/ledger.sqlite3)
TALLY_HOME          where local state lives (default: ./.tally)
TALLY_NAMESPACE     key prefix in Redis (default: tally)
TALLY_SHARDS        logical shards, fixed at `tally init` (default: 16)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tally.errors import ConfigError
from tally.store.keys import SHARDS_DEFAULT

LOCAL_STATE = "local.json"


@dataclass(frozen=True)
class Settings:
    home: Path
    redis_url: str | None
    ledger_url: str
    namespace: str = "tally"
    shards: int = SHARDS_DEFAULT
    redis_socket_timeout_ms: int = 2000
    redis_connect_timeout_ms: int = 1000
    redis_pool_max: int = 64
    wait_replicas: int = 0
    wait_timeout_ms: int = 50

    @classmethod
    def resolve(
        cls, *, redis_url: str | None = None, ledger_url: str | None = None, home: str | None = None
    ) -> Settings:
        home_path = Path(home or os.environ.get("TALLY_HOME") or ".tally")
        shards_text = os.environ.get("TALLY_SHARDS", str(SHARDS_DEFAULT))
        if not shards_text.isdigit():
            raise ConfigError(f"TALLY_SHARDS must be a whole number, got {shards_text!r}")
        return cls(
            home=home_path,
            redis_url=redis_url or os.environ.get("TALLY_REDIS_URL") or local_redis_url(home_path),
            ledger_url=ledger_url
            or os.environ.get("TALLY_LEDGER_URL")
            or f"sqlite:///{home_path / 'ledger.sqlite3'}",
            namespace=os.environ.get("TALLY_NAMESPACE", "tally"),
            shards=int(shards_text),
        )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "no Redis configured",
                hint="pass --redis-url or set TALLY_REDIS_URL, or start one with `tally local up`",
            )
        return self.redis_url


def local_redis_url(home: Path) -> str | None:
    state = home / LOCAL_STATE
    if not state.exists():
        return None
    try:
        url = json.loads(state.read_text())["redis_url"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{state} is unreadable: {exc}", hint=f"delete {state} and run `tally local up`"
        ) from exc
    if not isinstance(url, str):
        raise ConfigError(f"{state}: redis_url must be a string")
    return url
