"""A stop request from SIGINT/SIGTERM that a signal handler can make without taking a lock.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is,
and a second signal can interrupt the first handler. ``threading.Event.set`` takes the Event's
lock; so a handler that calls it deadlocks the process when the main thread already holds that
lock: inside ``Event.wait``'s bookkeeping, or inside the first handler's own ``set`` when a
second signal arrives (seen: SIGINT sent at once to `uv run` and to the `tally serve` under it,
as a terminal's Ctrl-C reaches a process group, and uv forwards what it gets to its child; py-spy
showed the serve stuck in ``Event.set`` nested in ``Event.set``, and it never stopped).

Here the handler only sets an attribute (no lock, no allocation that can block), and a daemon
thread turns it into ``event`` within ``RELAY_S``, then calls ``on_stop`` if given:

    stop = SignalStop.install()         # SIGINT and SIGTERM, this process, from now on
    worker.run(stop.event)              # waiters use the Event as before
    stop.restore()                      # the handlers that were there before
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

#: How soon a signal becomes ``event`` (the relay thread's poll).
RELAY_S = 0.05
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalStop:
    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.signalled: int | None = None  # the first signal's number, set by the handler only
        self._on_stop = on_stop
        self._previous: dict[int, Any] = {}
        self._relay = threading.Thread(target=self._run, name="signal-stop", daemon=True)

    @classmethod
    def install(
        cls, on_stop: Callable[[], None] | None = None, signals: Sequence[int] = SIGNALS
    ) -> SignalStop:
        """Handlers for ``signals`` (main thread only, as ``signal.signal`` requires)."""
        stop = cls(on_stop)
        for sig in signals:
            stop._previous[sig] = signal.signal(sig, stop.handler)
        stop._relay.start()
        return stop

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        """The signal handler: one attribute store, nothing that can wait."""
        if self.signalled is None:
            self.signalled = signum

    def _run(self) -> None:
        while self.signalled is None and not self.event.is_set():  # ends with the process
            time.sleep(RELAY_S)
        self.event.set()
        if self.signalled is not None and self._on_stop is not None:
            self._on_stop()

    def restore(self) -> None:
        """The previous handlers back (main thread only); the relay thread ends."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        self.event.set()
