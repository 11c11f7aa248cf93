"""SignalStop: a stop request a signal handler makes without a lock.

A second signal can run its handler inside the first one's, in the thread that is then holding
whatever the first handler took. With ``Event.set`` as the handler that is the Event's own lock:
`uv run tally serve` hung that way on a SIGINT sent to its process group (uv forwards it too).
The nested case is reproduced here by calling the handler while the calling thread holds the
Event's lock, exactly where the second handler ran."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType

from tally.ops.signals import RELAY_S, SignalStop

Handler = Callable[[int, FrameType | None], None]


def _inside_the_events_lock(handler: Handler, event: threading.Event, done: list[bool]) -> None:
    """A handler run where a nested signal runs it: in the thread holding the Event's lock."""
    try:
        with event._cond:  # type: ignore[attr-defined]  # the lock Event.set takes
            handler(signal.SIGINT, None)
            done.append(True)
    except RuntimeError:  # the test released the lock from outside to free a stuck handler
        pass


def _run(handler: Handler, event: threading.Event) -> tuple[threading.Thread, list[bool]]:
    done: list[bool] = []
    thread = threading.Thread(target=_inside_the_events_lock, args=(handler, event, done))
    thread.daemon = True
    thread.start()
    thread.join(1.0)
    return thread, done


def test_a_handler_that_sets_the_event_itself_deadlocks_on_a_nested_signal() -> None:
    """The failure, without SignalStop: the handler waits for a lock its own thread holds."""
    event = threading.Event()
    thread, done = _run(lambda _s, _f: event.set(), event)
    assert thread.is_alive() and not done  # stuck: this is the hang seen with uv run
    event._cond.release()  # type: ignore[attr-defined]  # free it (a plain Lock: any thread)
    thread.join(2.0)
    assert not thread.is_alive()


def test_the_signal_stop_handler_returns_at_once_and_the_event_follows() -> None:
    stop = SignalStop()  # not installed: its handler and relay, driven by hand
    thread, done = _run(stop.handler, stop.event)
    assert done == [True] and not thread.is_alive()
    assert not stop.event.is_set()  # the handler itself touched nothing that locks
    stop._relay.start()
    assert stop.event.wait(20 * RELAY_S)
    assert stop.signalled == signal.SIGINT


def test_on_stop_runs_once_after_a_signal_and_not_after_restore() -> None:
    calls: list[str] = []
    stop = SignalStop(on_stop=lambda: calls.append("stop"))
    stop._relay.start()
    stop.handler(signal.SIGTERM, None)
    stop.handler(signal.SIGINT, None)  # a second signal changes nothing
    assert stop.event.wait(20 * RELAY_S)
    stop._relay.join(20 * RELAY_S)
    assert calls == ["stop"] and stop.signalled == signal.SIGTERM

    quiet: list[str] = []
    other = SignalStop(on_stop=lambda: quiet.append("stop"))
    other._relay.start()
    other.restore()  # no signal: the relay ends without calling on_stop
    other._relay.join(20 * RELAY_S)
    assert not other._relay.is_alive() and quiet == []


CHILD = """
import sys, time
from tally.ops.signals import SignalStop
stop = SignalStop.install()
print("ready", flush=True)
assert stop.event.wait(30), "no stop within 30 s"
stop.restore()
print("stopped", stop.signalled, flush=True)
"""


def test_a_process_stops_on_sigint_and_on_sigterm() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            child.send_signal(sig)
            child.send_signal(sig)  # twice, as uv's forwarding and the process group give it
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)
        assert child.returncode == 0
        assert out.strip() == f"stopped {int(sig)}"
