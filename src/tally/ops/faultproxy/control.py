"""The daemon's loopback HTTP/JSON control port, and :class:`ProxyControl`, its client.

    GET    /health                         {"ok": true}
    GET    /links                          {name: status}
    GET    /links/NAME                     status (listen, upstream, faults, stats)
    POST   /links                          {"name", "upstream_host", "upstream_port", "listen_port"}
    DELETE /links/NAME
    POST   /links/NAME/faults              {"kind", "direction", "params": {...}}
    DELETE /links/NAME/faults?kind=K&direction=D   (both optional: clear everything)
    GET    /fronts                         {name: status}
    POST   /fronts                         {"name", "default", "routes", "listen_host", ...}
    DELETE /fronts/NAME

Errors answer 400 (bad request) or 404 (no such link) with {"error": message}.
"""

from __future__ import annotations

import json
import os
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tally.errors import ConfigError, InfrastructureError, TallyError, UsageError
from tally.ops.faultproxy.front import FrontSpec
from tally.ops.faultproxy.hub import ProxyHub, UnknownLink, front_spec
from tally.ops.faultproxy.link import LinkSpec
from tally.ops.signals import SignalStop

BODY_BYTES_MAX = 65_536
DEFAULT_CONTROL_PORT = 8474  # toxiproxy's API port, for familiarity


class _Handler(BaseHTTPRequestHandler):
    server: _ControlServer
    timeout = 10  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the caller's logs say what it injected

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            status, body = self._route(method, urlsplit(self.path))
        except UnknownLink as exc:
            status, body = HTTPStatus.NOT_FOUND, {"error": str(exc)}
        except TallyError as exc:
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_BYTES_MAX:
            raise UsageError(f"request body over {BODY_BYTES_MAX} bytes")
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise UsageError(f"body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise UsageError("body must be a JSON object")
        return data

    def _route(self, method: str, url: Any) -> tuple[HTTPStatus, Any]:
        hub, parts = self.server.hub, [p for p in url.path.split("/") if p]
        ok = HTTPStatus.OK
        if parts == ["health"] and method == "GET":
            return ok, {"ok": True}
        if parts == ["links"] and method == "GET":
            return ok, hub.status()
        if parts == ["links"] and method == "POST":
            host, port = hub.add_link(_spec(self._body()))
            return ok, {"listen": [host, port]}
        if len(parts) == 2 and parts[0] == "links":
            if method == "GET":
                return ok, hub.status_of(parts[1])
            if method == "DELETE":
                hub.remove_link(parts[1])
                return ok, {"removed": parts[1]}
        if parts == ["fronts"] and method == "GET":
            return ok, hub.fronts()
        if parts == ["fronts"] and method == "POST":
            host, port = hub.add_front(_front(self._body()))
            return ok, {"listen": [host, port]}
        if len(parts) == 2 and parts[0] == "fronts" and method == "DELETE":
            hub.remove_front(parts[1])
            return ok, {"removed": parts[1]}
        if len(parts) == 3 and parts[0] == "links" and parts[2] == "faults":
            return ok, self._faults(method, parts[1], parse_qs(url.query))
        raise UsageError(f"no route {method} {url.path}")

    def _faults(self, method: str, name: str, query: dict[str, list[str]]) -> Any:
        hub = self.server.hub
        if method == "POST":
            body = self._body()
            params = body.get("params") or {}
            if not isinstance(params, dict):
                raise UsageError("params must be a JSON object")
            hub.set_fault(name, str(body.get("direction", "both")), str(body.get("kind")), **params)
        elif method == "DELETE":
            kind = query.get("kind", [None])[0]
            hub.clear(name, kind, query.get("direction", ["both"])[0])
        else:
            raise UsageError(f"no route {method} /links/{name}/faults")
        return hub.status_of(name)


def _spec(body: dict[str, Any]) -> LinkSpec:
    try:
        return LinkSpec(
            name=str(body["name"]),
            upstream_host=str(body.get("upstream_host", "127.0.0.1")),
            upstream_port=int(body["upstream_port"]),
            listen_port=int(body.get("listen_port", 0)),
            listen_host=str(body.get("listen_host", "127.0.0.1")),
            listen=bool(body.get("listen", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"bad link: {exc}") from exc


def _front(body: dict[str, Any]) -> FrontSpec:
    try:
        return front_spec(body, "request")
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


class _ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: ProxyHub, port: int) -> None:
        self.hub = hub
        super().__init__(("127.0.0.1", port), _Handler)


def serve(hub: ProxyHub, control_port: int, ready_file: Path | None = None) -> None:
    """Run the hub and its control port until SIGTERM or SIGINT; always closes both."""
    hub.start()
    try:
        server = _ControlServer(hub, control_port)
    except OSError as exc:
        hub.stop()
        raise UsageError(f"cannot listen on control port 127.0.0.1:{control_port}: {exc}") from exc
    stop = SignalStop.install(on_stop=server.shutdown)  # shutdown() from its relay thread
    try:
        if ready_file is not None:
            _write_ready(ready_file, server.server_address[1], hub)
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.restore()
        server.server_close()
        hub.stop()


def _write_ready(path: Path, control_port: int, hub: ProxyHub) -> None:
    info = {"pid": os.getpid(), "control_port": control_port, "links": hub.status()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)  # readers never see half a file


class ProxyControl:
    """Client for a running ``tally proxy serve``: the same calls as :class:`ProxyHub`."""

    def __init__(self, port: int = DEFAULT_CONTROL_PORT, *, timeout_s: float = 5.0) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProxyControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise InfrastructureError(
                f"fault proxy control port {self.base_url} unreachable: {exc}",
                hint="start it with `tally proxy serve` or pass --control-port",
            ) from exc
        body = response.json()
        if response.status_code == HTTPStatus.NOT_FOUND:
            raise UnknownLink(body.get("error", "no such link"))
        if response.status_code != HTTPStatus.OK:
            raise UsageError(body.get("error", f"HTTP {response.status_code}"))
        return body

    def health(self) -> bool:
        return bool(self._request("GET", "/health").get("ok"))

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.health()
                return
            except InfrastructureError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def status(self) -> dict[str, dict[str, Any]]:
        return dict(self._request("GET", "/links"))

    def status_of(self, link: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/links/{link}"))

    def stats(self, link: str) -> dict[str, int]:
        return dict(self.status_of(link)["stats"])

    def address(self, link: str) -> tuple[str, int]:
        host, port = self.status_of(link)["listen"]
        return str(host), int(port)

    def add_link(self, spec: LinkSpec) -> tuple[str, int]:
        body = {
            "name": spec.name,
            "upstream_host": spec.upstream_host,
            "upstream_port": spec.upstream_port,
            "listen_port": spec.listen_port,
            "listen_host": spec.listen_host,
            "listen": spec.listen,
        }
        listen = self._request("POST", "/links", json=body)["listen"]
        return (str(listen[0]), int(listen[1])) if listen else (spec.listen_host, 0)

    def add_front(self, spec: FrontSpec) -> tuple[str, int]:
        body = {
            "name": spec.name,
            "default": spec.default,
            "routes": dict(spec.routes),
            "listen_host": spec.listen_host,
            "listen_port": spec.listen_port,
        }
        host, port = self._request("POST", "/fronts", json=body)["listen"]
        return str(host), int(port)

    def remove_front(self, name: str) -> None:
        self._request("DELETE", f"/fronts/{name}")

    def fronts(self) -> dict[str, dict[str, Any]]:
        return dict(self._request("GET", "/fronts"))

    def remove_link(self, link: str) -> None:
        self._request("DELETE", f"/links/{link}")

    def set_fault(self, link: str, direction: str, kind: str, **params: Any) -> None:
        body = {"kind": kind, "direction": direction, "params": params}
        self._request("POST", f"/links/{link}/faults", json=body)

    def reset(self, link: str, direction: str = "both") -> None:
        self.set_fault(link, direction, "reset")

    def clear(self, link: str, kind: str | None = None, direction: str = "both") -> None:
        query = {"direction": direction} | ({"kind": kind} if kind else {})
        self._request("DELETE", f"/links/{link}/faults", params=query)
