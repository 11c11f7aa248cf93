"""ProxyHub: many links in one asyncio loop on a background thread, driven by a sync API."""

from __future__ import annotations

import asyncio
import json
import threading
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tally.errors import ConfigError, UsageError
from tally.ops.faultproxy.faults import Direction, FaultKind, make_fault
from tally.ops.faultproxy.front import Front, FrontSpec
from tally.ops.faultproxy.link import Link, LinkSpec, ProxyLimits

T = TypeVar("T")
CALL_TIMEOUT_S = 15.0
LINKS_MAX = 256


class UnknownLink(UsageError):
    hint = "list the links with `tally proxy status`"


class ProxyHub:
    """Hosts N links in one event loop running on its own thread.

    ``start()`` binds every link (or raises); ``stop()`` closes listeners and connections and joins
    the thread. All methods are thread-safe and return once the change is in effect.
    """

    def __init__(
        self,
        links: Iterable[LinkSpec] = (),
        *,
        fronts: Iterable[FrontSpec] = (),
        limits: ProxyLimits | None = None,
    ):
        self.limits = limits or ProxyLimits()
        self._initial = list(links)
        self._initial_fronts = list(fronts)
        self._links: dict[str, Link] = {}
        self._fronts: dict[str, Front] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ProxyHub:
        if self._thread is not None:
            raise UsageError("proxy hub already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tally-faultproxy", daemon=True
        )
        self._thread.start()
        try:
            for spec in self._initial:
                self.add_link(spec)
            for front in self._initial_fronts:
                self.add_front(front)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close_all)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            self._links.clear()
            self._fronts.clear()

    def __enter__(self) -> ProxyHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- links ---------------------------------------------------------------------------------
    def add_link(self, spec: LinkSpec) -> tuple[str, int]:
        """Start proxying a link; returns the (host, port) clients connect to."""

        async def add() -> tuple[str, int]:
            if spec.name in self._links or spec.name in self._fronts:
                raise UsageError(f"link {spec.name} exists already")
            if len(self._links) >= LINKS_MAX:
                raise UsageError(f"at most {LINKS_MAX} links per hub")
            link = Link(spec, self.limits)
            await link.open()
            self._links[spec.name] = link
            return spec.listen_host, link.port

        return self._call(add)

    def remove_link(self, name: str) -> None:
        async def remove() -> None:
            await self._link(name).close()
            del self._links[name]

        self._call(remove)

    # -- fronts --------------------------------------------------------------------------------
    def add_front(self, spec: FrontSpec) -> tuple[str, int]:
        """Start a shared listener that serves each client by the route of its source address
        (see :mod:`tally.ops.faultproxy.front`); its routes must exist, made with
        ``LinkSpec(..., listen=False)``. Returns the (host, port) clients connect to."""

        async def add() -> tuple[str, int]:
            if spec.name in self._fronts or spec.name in self._links:
                raise UsageError(f"front {spec.name}: the name is taken")
            if len(self._fronts) >= LINKS_MAX:
                raise UsageError(f"at most {LINKS_MAX} fronts per hub")
            for route in sorted(spec.route_names()):
                if self._link(route).spec.listen:
                    raise UsageError(f"front {spec.name}: link {route} has its own listener")
            front = Front(spec, self._link, self.limits.socket_buffer_bytes)
            await front.open()
            self._fronts[spec.name] = front
            return spec.listen_host, front.port

        return self._call(add)

    def remove_front(self, name: str) -> None:
        async def remove() -> None:
            await self._front(name).close()
            del self._fronts[name]

        self._call(remove)

    def fronts(self) -> dict[str, dict[str, Any]]:
        return self._call_sync(lambda: {n: f.status() for n, f in sorted(self._fronts.items())})

    def address(self, name: str) -> tuple[str, int]:
        if name in self._fronts:
            front = self._fronts[name]
            return front.spec.listen_host, front.port
        link = self._link(name)
        return link.spec.listen_host, link.port

    def link_names(self) -> list[str]:
        return sorted(self._links)

    # -- faults --------------------------------------------------------------------------------
    def set_fault(self, link: str, direction: str, kind: str, **params: Any) -> None:
        """Apply a fault, e.g. ``set_fault("dc1-dc2", "both", "partition", mode="drop")``."""
        fault = make_fault(kind, direction, **params)
        self._call(lambda: self._link(link).set_fault(fault))

    def reset(self, link: str, direction: str = "both") -> None:
        self.set_fault(link, direction, "reset")

    def clear(self, link: str, kind: str | None = None, direction: str = "both") -> None:
        """Clear one kind of fault (or all, ``kind=None``) on one direction (or both)."""
        try:
            fkind = FaultKind(kind) if kind is not None else None
            fdir = Direction(direction)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self._call(lambda: self._link(link).clear(fkind, fdir))

    def clear_all(self) -> None:
        for name in self.link_names():
            self.clear(name)

    def stats(self, link: str) -> dict[str, int]:
        return dict(self.status_of(link)["stats"])

    def status_of(self, link: str) -> dict[str, Any]:
        return self._call_sync(lambda: self._link(link).status())

    def status(self) -> dict[str, dict[str, Any]]:
        return self._call_sync(lambda: {n: lk.status() for n, lk in sorted(self._links.items())})

    # -- plumbing ------------------------------------------------------------------------------
    def _link(self, name: str) -> Link:
        try:
            return self._links[name]
        except KeyError:
            raise UnknownLink(f"no link named {name!r}; links: {self.link_names()}") from None

    def _front(self, name: str) -> Front:
        try:
            return self._fronts[name]
        except KeyError:
            raise UnknownLink(f"no front named {name!r}; fronts: {sorted(self._fronts)}") from None

    async def _close_all(self) -> None:
        for front in self._fronts.values():
            await front.close()
        for link in self._links.values():
            await link.close()
        # Every connection task must finish on this loop before it closes, or its coroutine is
        # collected later on a dead loop.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CALL_TIMEOUT_S / 2)

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            raise UsageError("proxy hub is not started")

        async def run() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(CALL_TIMEOUT_S)

    def _call_sync(self, make: Callable[[], T]) -> T:
        async def run() -> T:
            return make()

        return self._call(run)


def load_config(path: Path) -> list[LinkSpec]:
    """Links from a TOML or JSON file::

    [[link]]                      # JSON: {"link": [{...}, ...]}
    name = "dc1-dc2"
    listen_port = 7001            # optional, 0 or absent = any free port
    upstream = "127.0.0.1:6380"
    listen = true                 # optional; false: a route served by a [[front]]

    Fronts are read by :func:`load_fronts` from the same file.
    """
    return [_spec_from(entry, path) for entry in _tables(path, "link")]


def _spec_from(entry: dict[str, Any], path: Path) -> LinkSpec:
    try:
        host, _, port = str(entry["upstream"]).rpartition(":")
        return LinkSpec(
            name=str(entry["name"]),
            upstream_host=host or "127.0.0.1",
            upstream_port=int(port),
            listen_port=int(entry.get("listen_port", 0)),
            listen_host=str(entry.get("listen_host", "127.0.0.1")),
            listen=bool(entry.get("listen", True)),
        )
    except (KeyError, ValueError, UsageError) as exc:
        raise ConfigError(f"{path}: bad link {entry!r}: {exc}") from exc


def load_fronts(path: Path) -> list[FrontSpec]:
    """Fronts from the same file as :func:`load_config`::

    [[front]]
    name = "r1"
    listen_port = 7000
    default = "dc1-to-r1"                         # any other source address
    routes = { "127.0.2.1" = "dc2-to-r1" }        # source address -> route
    """
    return [front_spec(entry, str(path)) for entry in _tables(path, "front")]


def _tables(path: Path, key: str) -> list[Any]:
    """The ``[[key]]`` tables of a TOML (or JSON) proxy config, at most ``LINKS_MAX``."""
    try:
        text = Path(path).read_text()
        data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read proxy config {path}: {exc}") from exc
    entries = data.get(key, [])
    if not isinstance(entries, list) or len(entries) > LINKS_MAX:
        raise ConfigError(f"{path}: '{key}' must be a list of at most {LINKS_MAX} tables")
    return entries


def front_spec(entry: Any, source: str) -> FrontSpec:
    """A :class:`FrontSpec` from a JSON/TOML table, or ``ConfigError`` naming what is wrong."""
    try:
        routes = entry.get("routes", {})
        if not isinstance(routes, dict):
            raise ValueError("routes must be a table of source address = route")
        return FrontSpec(
            name=str(entry["name"]),
            default=str(entry["default"]),
            routes={str(k): str(v) for k, v in routes.items()},
            listen_host=str(entry.get("listen_host", "127.0.0.1")),
            listen_port=int(entry.get("listen_port", 0)),
        )
    except (AttributeError, KeyError, TypeError, ValueError, UsageError) as exc:
        raise ConfigError(f"{source}: bad front {entry!r}: {exc}") from exc
