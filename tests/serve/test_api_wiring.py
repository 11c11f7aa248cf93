"""The API's parts are wired by one function for both ways of serving, and the async Redis pool
behind the hot path is closed on the serving loop once uvicorn stops."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tally.errors import ConfigError
from tally.service import api_wiring, http_workers, runner
from tally.service.api_wiring import serve_uvicorn
from tally.service.http_workers import listening_socket


class RecordingDebits:
    """Stands in for ``AsyncDebits``: records the loop its ``close`` ran on."""

    def __init__(self) -> None:
        self.closed_on: list[asyncio.AbstractEventLoop] = []

    async def close(self) -> None:
        self.closed_on.append(asyncio.get_running_loop())


async def app(scope: Scope, receive: Receive, send: Send) -> None:  # never called
    raise AssertionError("no request was sent")


def _serve(on_loop_error: bool = False) -> tuple[RecordingDebits, list[asyncio.AbstractEventLoop]]:
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    debits = RecordingDebits()
    loops: list[asyncio.AbstractEventLoop] = []

    def on_loop() -> None:
        loops.append(asyncio.get_running_loop())
        server.should_exit = True  # stop at once: what SIGTERM does
        if on_loop_error:
            raise OSError("serving failed")

    def run() -> None:
        with contextlib.suppress(OSError):
            serve_uvicorn(server, sock, debits, on_loop=on_loop)  # type: ignore[arg-type]

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    sock.close()
    assert not thread.is_alive()
    return debits, loops


def test_the_async_pool_is_closed_on_the_serving_loop_when_uvicorn_stops() -> None:
    """Without it the pool's sockets to the primary stay open past the server (one set per
    worker and per restart): close must run once, on the very loop that served."""
    debits, loops = _serve()
    assert len(loops) == 1
    assert debits.closed_on == loops


def test_the_async_pool_is_closed_when_serving_fails_too() -> None:
    debits, loops = _serve(on_loop_error=True)
    assert debits.closed_on == loops


def test_one_function_builds_the_api_context_for_both_ways_of_serving() -> None:
    """The single-process server and the worker processes both call ``build_api``, and neither
    constructs an ``ApiContext`` or ``AsyncDebits`` of its own (two wirings drift apart)."""
    import inspect

    for module in (runner, http_workers):
        source = inspect.getsource(module)
        assert "build_api(" in source, module.__name__
        assert "ApiContext(" not in source, module.__name__
        assert "AsyncDebits(" not in source, module.__name__
        assert "serve_uvicorn(" in source, module.__name__
    assert "ApiContext(" in inspect.getsource(api_wiring)


def test_granian_missing_or_an_unknown_server_is_a_clear_error_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """granian is an optional extra: without it `--server granian` names the extra to install
    (a ConfigError with a stable code), and an unknown server is refused the same way."""
    monkeypatch.setattr(api_wiring, "granian_available", lambda: False)
    with pytest.raises(ConfigError) as missing:
        api_wiring.require_server("granian")
    assert "--extra bench" in missing.value.hint
    with pytest.raises(ConfigError):
        api_wiring.require_server("gunicorn")
    api_wiring.require_server("uvicorn")  # always there


def test_bench_http_refuses_an_unknown_server_without_starting_anything() -> None:
    from click.testing import CliRunner

    from tally.cli.bench_cmd import bench

    result = CliRunner().invoke(bench, ["http", "--server", "uvicorn,gunicorn"])
    assert result.exit_code == 2 and "--server" in result.output
