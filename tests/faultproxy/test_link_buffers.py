"""A throttled link back-pressures its sender as a WAN bottleneck does.

The lab's output-buffer loop (F2) needs a primary whose RDB transfer to a replica behind a
300 kB/s link is slow enough that writes pile up in its output buffer for that replica. With
Linux's autotuned socket buffers (``tcp_rmem`` max 32 MB on this machine) the proxy's receive
buffer took in megabytes of the RDB at loopback speed, the primary saw its transfer end early,
and whether the loop happened at all depended on the kernel (CI: one full sync where the
scenario needs two). Measured by hand with this test's sender for 10 s at 64 kB/s: 5.1 MB
between the sender and the receiver without fixed proxy buffers, 2.1 MB with them (most of it
the sender's own autotuned send buffer, which only the sender could fix).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tally.ops.faultproxy import LinkSpec, ProxyHub

RATE = 64 * 1024
SECONDS = 4.0
#: what may sit between a sender and its receiver on the throttled link: the sender's own send
#: buffer (autotuned, ~1.5 MB seen), the proxy's fixed receive buffer, its queue and reader
IN_FLIGHT_MAX = 3_000_000


def _push_for(listener: socket.socket, seconds: float, pushed: list[int]) -> None:
    """Accept one connection and write to it for ``seconds`` as fast as its kernel takes."""
    conn, _ = listener.accept()
    with conn:
        conn.setblocking(False)
        chunk, end = b"x" * 65_536, time.monotonic() + seconds
        while time.monotonic() < end:  # bounded by the deadline
            try:
                pushed[0] += conn.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)


def test_a_sender_behind_a_throttled_link_cannot_push_megabytes_into_the_proxy() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pushed = [0]
        sender = threading.Thread(target=_push_for, args=(listener, SECONDS, pushed))
        sender.start()
        spec = LinkSpec("wan", "127.0.0.1", listener.getsockname()[1])
        with ProxyHub([spec]) as hub:
            hub.set_fault("wan", "downstream", "bandwidth", rate_bytes_s=RATE)
            received = 0
            with socket.create_connection(hub.address("wan"), timeout=5) as receiver:
                receiver.settimeout(0.2)
                end = time.monotonic() + SECONDS
                while time.monotonic() < end:  # bounded by the deadline
                    with contextlib.suppress(TimeoutError):
                        received += len(receiver.recv(65_536))
            sender.join(SECONDS + 5)
    assert received <= RATE * (SECONDS + 1)  # the link was throttled (the test's premise)
    assert pushed[0] - received <= IN_FLIGHT_MAX, (pushed[0], received)
