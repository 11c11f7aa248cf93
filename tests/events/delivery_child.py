"""A delivery worker in its own process, for the SIGKILL test: it delivers until killed."""

from __future__ import annotations

import sys
import time

from tally.ledger.sql_ledger import SqlLedger
from tally.service.delivery import DeliveryOptions, DeliveryWorker

ROUNDS_MAX = 100_000  # the test kills it long before


def main() -> None:
    ledger_url, owner = sys.argv[1:3]
    with SqlLedger.open(ledger_url, migrate=False) as ledger:
        worker = DeliveryWorker(ledger, owner=owner, options=DeliveryOptions(timeout_s=30.0))
        for _ in range(ROUNDS_MAX):
            if worker.run_once() == 0:
                time.sleep(0.05)


if __name__ == "__main__":
    main()
