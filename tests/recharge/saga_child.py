"""A recharge worker in its own process, for the SIGKILL test: it stops at a fault point after
writing a marker file, so the test can kill it exactly there (the gateway has charged, the
ledger does not know yet)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tally.bootstrap import open_deployment, recharging
from tally.config import Settings
from tally.gateway.client import HttpGateway

PAUSE_S = 120  # the test kills the process long before this


def main() -> None:
    redis_url, ledger_url, home, gateway_url, recharge_id, point, marker = sys.argv[1:8]

    def fault(where: str) -> None:
        if where == point:
            Path(marker).write_text(where)
            time.sleep(PAUSE_S)

    settings = Settings.resolve(redis_url=redis_url, ledger_url=ledger_url, home=home)
    with open_deployment(settings) as dep, HttpGateway(gateway_url) as gateway:
        wiring = recharging(dep, gateway, fault=fault)
        wiring.saga.drive(recharge_id)


if __name__ == "__main__":
    main()
