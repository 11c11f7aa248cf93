"""Fault proxy: one TCP proxy per inter-DC link, with toxiproxy's fault vocabulary.

Why a userspace asyncio proxy
-----------------------------
What this machine offers (checked 2026-11): we run as root with full capabilities, ``ip`` and
``unshare`` work (network namespaces can be made), ``tc`` is installed, but the kernel has no
``sch_netem`` ("Specified qdisc kind is unknown") and there is no ``nft``. So kernel-level latency
and loss are not available here, and where they are they need root, touch shared interfaces and
are Linux-only. A userspace proxy works unprivileged, on any machine and in CI, touches nothing
outside its own loopback sockets, can be steered per link and per direction from Python, and
counts bytes. Its cost: faults act on the byte stream (not packets), so TCP-level behaviour such
as retransmission is modelled, not real. That is the level Redis replication sees anyway.

Semantics
---------
Directions: ``upstream`` is client -> server, ``downstream`` server -> client, ``both`` both.

* ``partition mode=drop`` (per direction): a blackhole. Bytes are held, not forwarded, and never
  silently lost (as TCP never loses bytes mid-stream: a Redis replication stream stays
  well-formed); the senders stall on full buffers, peers time out. A connection accepted during a
  drop partition is not connected upstream until the link heals (like a retransmitted SYN), at
  most ``ProxyLimits.hold_connect_s_max``. Clearing delivers what was held.
* ``partition mode=refuse`` (direction ``both`` only): closes the listener, so ``connect()`` gets
  ECONNREFUSED, and closes every current connection. Clearing re-opens the same port.
* ``latency latency_ms=N jitter_ms=J``: each chunk is delivered N±J ms after it arrived; order is
  kept and the link stays pipelined (the delay is not per round trip).
* ``bandwidth rate_bytes_s=R``: a shared cap for all connections of the link in that direction.
* ``reset``: an action, once: every current connection is closed; the sides named by the direction
  get a TCP RST (``downstream`` = the client sees "connection reset"), the other a plain close.
* ``slow_close delay_ms=N``: a close (EOF) is passed on N ms late.

Limits: ``ProxyLimits`` bounds connections per link (more are closed and counted), bytes in
flight per connection and direction (a bounded queue + ``drain()``), connect and hold times.
Links listen on loopback only.

Public API (stable; the cluster tooling builds on it)
-----------------------------------------------------
In process::

    hub = ProxyHub([LinkSpec("dc1-dc2", "127.0.0.1", 6380, listen_port=0)]).start()
    host, port = hub.address("dc1-dc2")
    hub.set_fault("dc1-dc2", "both", "partition", mode="drop")
    hub.set_fault("dc1-dc2", "downstream", "latency", latency_ms=50, jitter_ms=10)
    hub.set_fault("dc1-dc2", "upstream", "bandwidth", rate_bytes_s=1_000_000)
    hub.reset("dc1-dc2")                      # == set_fault(link, "both", "reset")
    hub.clear("dc1-dc2")                      # or clear(link, "latency", "downstream")
    hub.stats("dc1-dc2")  # bytes_upstream, bytes_downstream, connections_open, ..._total, ...
    hub.status()          # {name: {listen, upstream, faults, stats}}
    hub.add_link(spec) -> (host, port); hub.remove_link(name); hub.stop()

Fronts (one address per node for everyone, the route picked by the client's source address;
see :mod:`tally.ops.faultproxy.front`)::

    hub.add_link(LinkSpec("dc2-to-r1", "127.0.1.1", 6380, listen=False))   # a route
    hub.add_link(LinkSpec("dc1-to-r1", "127.0.1.1", 6380, listen=False))
    hub.add_front(FrontSpec("r1", default="dc1-to-r1", routes={"127.0.2.1": "dc2-to-r1"},
                            listen_host="127.0.1.1"))  # -> (host, port)
    hub.set_fault("dc2-to-r1", "both", "partition", mode="drop")  # only dc2's clients of r1

As a daemon: ``tally proxy serve --config links.toml --control-port 8474 [--ready-file F]``
(see :func:`load_config` for the file), steered with :class:`ProxyControl` (same methods as the
hub) or ``tally proxy fault|clear|status``. The HTTP routes are listed in ``control.py``.
Errors: bad requests raise ``UsageError``, an unknown link ``UnknownLink`` (a ``UsageError``),
an unreachable daemon ``InfrastructureError``.
"""

from tally.ops.faultproxy.control import DEFAULT_CONTROL_PORT, ProxyControl, serve
from tally.ops.faultproxy.faults import Direction, FaultKind, make_fault
from tally.ops.faultproxy.front import FrontSpec
from tally.ops.faultproxy.hub import ProxyHub, UnknownLink, load_config, load_fronts
from tally.ops.faultproxy.link import LinkSpec, ProxyLimits

__all__ = [
    "DEFAULT_CONTROL_PORT",
    "Direction",
    "FaultKind",
    "FrontSpec",
    "LinkSpec",
    "ProxyControl",
    "ProxyHub",
    "ProxyLimits",
    "UnknownLink",
    "load_config",
    "load_fronts",
    "make_fault",
    "serve",
]
